"""The fine-tuning HTTP API on a real gateway on 127.0.0.1, driven by the official openai client: files
(upload streamed to disk, limits, content, delete), job requests and their refusals, pagination, and
every error in OpenAI's shape. No training here: the jobs' base model is a missing folder, so the
worker (running inside the gateway) fails each job before launching anything; tests/finetune/test_http_e2e.py
trains for real."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from finetune_helpers import identity_jsonl
from gateway_support import make_gateway, make_settings, new_key, serving
from openai import OpenAI

LIMIT = 64 * 1024


def ft_block(folder: Path, model: Path, **changes: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "files_max_bytes": LIMIT,
        "serve": {"idle_stop_s": 900, "max_resident": 1, "ports": "18100-18199"},
        "base_models": [{"name": "tiny-demo", "path": str(model), "template": "default"}],
        "database": str(folder / "ft" / "finetune.db"),
    }
    return {**block, **changes}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Any, OpenAI, str]]:
    settings = make_settings([], tmp_path, fine_tuning=ft_block(tmp_path, tmp_path / "no-such-model"))
    key = new_key(settings)
    with serving(make_gateway(settings)) as server:
        yield server, OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0), key


def _wait_status(client: OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return dict(body["error"])


def test_files_upload_list_page_content_delete(gateway) -> None:
    server, client, _ = gateway
    data = identity_jsonl()
    ids = [client.files.create(file=(f"train-{n}.jsonl", data), purpose="fine-tune").id for n in range(3)]
    first = client.files.retrieve(ids[0])
    assert first.bytes == len(data) and first.filename == "train-0.jsonl" and first.purpose == "fine-tune"
    assert first.status == "processed"
    assert client.files.content(ids[1]).content == data  # the bytes as uploaded

    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[:0:-1] and page.has_more  # newest first
    rest = client.files.list(limit=2, after=page.data[-1].id)
    assert [f.id for f in rest.data] == [ids[0]] and not rest.has_more
    assert [f.id for f in client.files.list(limit=1)] == ids[::-1]  # the client follows `after`

    deleted = client.files.delete(ids[1])
    assert deleted.deleted and deleted.id == ids[1]
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(ids[1])
    assert info.value.code == "file_not_found" and ids[1] in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.files.content(ids[1])
    with pytest.raises(openai.NotFoundError):
        client.files.delete(ids[1])


def test_upload_refusals(gateway, tmp_path: Path) -> None:
    server, client, key = gateway
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", b"x" * (LIMIT + 1)), purpose="fine-tune")
    assert info.value.status_code == 413 and info.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("t.jsonl", identity_jsonl()), purpose="assistants")
    assert bad.value.code == "invalid_purpose" and bad.value.param == "purpose"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0).files.list()

    auth = {"Authorization": f"Bearer {key}"}
    no_purpose = httpx.post(server.url + "/v1/files", headers=auth, files={"file": ("t.jsonl", b"{}\n")})
    assert no_purpose.status_code == 400 and _error(no_purpose)["param"] == "purpose"
    no_file = httpx.post(server.url + "/v1/files", headers=auth, data={"purpose": "fine-tune"})
    assert no_file.status_code == 400 and _error(no_file)["param"] == "file"
    not_form = httpx.post(server.url + "/v1/files", headers=auth, json={"purpose": "fine-tune"})
    assert not_form.status_code == 400 and "multipart/form-data" in _error(not_form)["message"]
    two = httpx.post(
        server.url + "/v1/files",
        headers=auth,
        data={"purpose": "fine-tune"},
        files=[("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))],
    )
    assert two.status_code == 400 and "more than one" in _error(two)["message"]
    cut = httpx.post(
        server.url + "/v1/files",
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}',
    )
    assert cut.status_code == 400 and _error(cut)["param"] == "file"
    files_dir = tmp_path / "ft" / "files"
    assert not list(files_dir.glob(".upload-*"))  # refused uploads leave nothing behind
    assert client.files.list().data == []


def test_malformed_file_fails_the_job_naming_the_row(gateway) -> None:
    _, client, _ = gateway
    bad = identity_jsonl() + b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
    uploaded = client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert uploaded.status == "error" and "row 3 (line 3)" in (uploaded.status_details or "")
    job = client.fine_tuning.jobs.create(model="tiny-demo", training_file=uploaded.id)
    assert job.status == "validating_files"
    done = _wait_status(client, job.id, ("failed",))
    assert done.error.code == "invalid_training_file" and done.error.param == "training_file"
    assert "row 3 (line 3)" in done.error.message and "2 of 4 rows" in done.error.message
    events = client.fine_tuning.jobs.list_events(job.id)
    assert events.data[0].level == "error" and "row 3" in events.data[0].message


def test_job_requests_refused_in_openai_shape(gateway) -> None:
    server, client, key = gateway
    train = client.files.create(file=("t.jsonl", identity_jsonl()), purpose="fine-tune").id
    cases: list[tuple[type[Exception], str | None, str | None, dict[str, Any]]] = [
        (openai.NotFoundError, "model_not_available", "model", {"model": "tiny-dem"}),
        (openai.NotFoundError, "file_not_found", "training_file", {"training_file": "file-nope"}),
        (openai.BadRequestError, "invalid_value", "suffix", {"suffix": "has space"}),
        (
            openai.BadRequestError,
            "invalid_value",
            "hyperparameters.n_epochs",
            {"hyperparameters": {"n_epochs": 0}},
        ),
        (
            openai.BadRequestError,
            "invalid_value",
            "hyperparameters.beta",
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
        ),
    ]
    for kind, code, param, change in cases:
        request = {"model": "tiny-demo", "training_file": train, **change}
        with pytest.raises(kind) as info:
            client.fine_tuning.jobs.create(**request)
        assert info.value.code == code and info.value.param == param, (change, info.value.body)
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.create(model="tiny-dem", training_file=train)
    assert "Did you mean 'tiny-demo'?" in missing.value.message

    url, auth = server.url + "/v1/fine_tuning/jobs", {"Authorization": f"Bearer {key}"}
    for body, code in ((b"{", "invalid_json"), (b"[]", "invalid_value"), (b'{"model": 1}', "invalid_value")):
        answer = httpx.post(url, headers=auth, content=body)
        assert answer.status_code == 400 and _error(answer)["code"] == code, answer.text
    unknown = httpx.post(url, headers=auth, json={"model": "tiny-demo", "training_file": train, "x": 1})
    assert _error(unknown)["param"] == "x" and "unknown parameter" in _error(unknown)["message"]
    for path in ("ftjob-nope", "ftjob-nope/events", "ftjob-nope/checkpoints"):
        answer = httpx.get(f"{url}/{path}", headers=auth)
        assert answer.status_code == 404 and _error(answer)["code"] == "job_not_found"
    assert httpx.post(f"{url}/ftjob-nope/cancel", headers=auth).status_code == 404
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("after=ftjob-x", "after")):
        answer = httpx.get(f"{url}?{query}", headers=auth)
        assert answer.status_code == 400 and _error(answer)["param"] == param, answer.text
    answer = httpx.get(f"{url}?limit=abc", headers=auth)
    assert answer.status_code == 400 and _error(answer)["param"] == "query.limit"
    assert httpx.get(url).status_code == 401 and _error(httpx.get(url))["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(
            model="ft:tiny-demo:x:ftjob-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.value.code == "model_not_found"


def test_jobs_pagination_metadata_and_the_worker_in_the_gateway(gateway) -> None:
    server, client, _ = gateway
    train = client.files.create(file=("t.jsonl", identity_jsonl()), purpose="fine-tune").id
    ids = [
        client.fine_tuning.jobs.create(
            model="tiny-demo",
            training_file=train,
            suffix=f"s{n}",
            metadata={"team": "a" if n % 2 else "b"},
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}},
            },
        ).id
        for n in range(3)
    ]
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[:0:-1] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=ids[1]).data] == [ids[0]]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == ids[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [ids[1]]
    job = client.fine_tuning.jobs.retrieve(ids[0])
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 1
    assert job.method.type == "supervised" and job.metadata == {"team": "b"}

    # the gateway's worker takes them: the base model's folder is missing, so each fails before launch
    for job_id in ids:
        failed = _wait_status(client, job_id, ("failed",))
        assert failed.error.code == "invalid_configuration" and "no-such-model" in failed.error.message
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.cancel(ids[0])
    assert info.value.code == "job_not_cancellable"
    events = client.fine_tuning.jobs.list_events(ids[0], limit=2)
    assert len(events.data) == 2 and events.has_more
    messages = [e.message for e in client.fine_tuning.jobs.list_events(ids[0], limit=1)]
    assert messages[-1].startswith("Created fine-tuning job") and "Fine-tuning job queued" in messages
    assert client.fine_tuning.jobs.checkpoints.list(ids[0]).data == []
    assert not [m.id for m in client.models.list() if m.id.startswith("ft:")]
    assert httpx.get(server.url + "/readyz").status_code == 200  # fine-tuning alone: ready


def test_openapi_document_describes_the_fine_tuning_endpoints(gateway) -> None:
    server, _, _ = gateway
    document = httpx.get(server.url + "/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/v1/files",
        "/v1/files/{file_id}/content",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/events",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    ):
        assert path in paths, sorted(paths)
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file", "purpose"]
    create = paths["/v1/fine_tuning/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "training_file", "method", "suffix"} <= set(create["properties"])
    assert "$ref" not in json.dumps(create)
    assert paths["/v1/files"]["get"]["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }


def test_without_fine_tuning_the_endpoints_are_absent(tmp_path: Path) -> None:
    settings = make_settings([], tmp_path, auth="open")
    with serving(make_gateway(settings)) as server:
        answer = httpx.get(server.url + "/v1/files")
        assert answer.status_code == 404 and _error(answer)["code"] == "not_found"
        assert "/v1/files" not in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_a_key_limited_to_models_and_the_settings_block(gateway, tmp_path: Path) -> None:
    server, _, _ = gateway
    from wrapper.gateway.settings import SettingsError, load_settings

    limited = new_key(server.server.gateway.settings, models=["conch"])
    client = OpenAI(base_url=server.url + "/v1", api_key=limited, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="ft:tiny-demo::ftjob-x", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_allowed"

    config = tmp_path / "gateway.yaml"
    config.write_text("fine_tuning:\n  max_paralel_jobs: 2\n  serve: {ports: '80-90'}\n", encoding="utf-8")
    with pytest.raises(SettingsError) as bad:
        load_settings(config)
    found = " ".join(problem.message for problem in bad.value.problems)
    assert "fine_tuning.max_paralel_jobs: unknown key (did you mean 'max_parallel_jobs'?)" in found
    assert "fine_tuning.serve.ports" in found
    config.write_text(f"fine_tuning:\n  base_models: [{{name: m, path: {tmp_path}, template: default}}]\n")
    assert load_settings(config).fine_tuning.base_models[0].name == "m"
    config.write_text("fine_tuning:  # every key at its default\n", encoding="utf-8")
    assert load_settings(config).fine_tuning is not None
    config.write_text("port: 8081\n", encoding="utf-8")
    assert load_settings(config).fine_tuning is None


def test_lfwrap_jobs_against_the_gateway(gateway, lfwrap) -> None:
    server, client, key = gateway
    bad = client.files.create(file=("bad.jsonl", b"not json\n"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-demo", training_file=bad.id, suffix="cli")
    _wait_status(client, job.id, ("failed",))
    env = {"LFWRAP_GATEWAY_URL": server.url + "/v1", "OPENAI_API_KEY": key}
    listed = lfwrap("jobs", "list", env=env, check=True).stdout
    assert job.id in listed and "failed" in listed
    shown = lfwrap("jobs", "show", job.id, env=env, check=True).stdout
    assert "invalid_training_file" in shown and "row 1 (line 1)" in shown
    events = lfwrap("jobs", "events", job.id, env=env, check=True).stdout.splitlines()
    assert "Created fine-tuning job" in events[0] and "The job failed" in events[-1]
    refused = lfwrap("jobs", "cancel", job.id, env=env)
    assert refused.returncode != 0 and f"Job {job.id} already failed; nothing to cancel." in refused.stderr
    assert "Traceback" not in refused.stderr
    no_key = lfwrap("jobs", "list", env={**env, "OPENAI_API_KEY": ""})
    assert no_key.returncode != 0 and "Pass a key with --api-key or OPENAI_API_KEY." in no_key.stderr
