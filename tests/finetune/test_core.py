"""The fine-tuning service core without training: settings, the SQLite store, files, jobs, pagination,
the worker's validation and its restart handling (real SQLite files, real run folders)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from finetune_helpers import identity_jsonl, tiny_settings, upload

from wrapper.errors import ConfigError, FineTuneError
from wrapper.finetune import files
from wrapper.finetune.jobs import create_job, create_job_run, run_config
from wrapper.finetune.objects import check_limit
from wrapper.finetune.settings import parse_settings
from wrapper.finetune.store import Store
from wrapper.finetune.worker import Worker
from wrapper.launch import runs
from wrapper.launch.process import process_identity

ISSUE_YAML = """
fine_tuning:
  backend: local            # or docker
  max_parallel_jobs: 1
  files_max_bytes: 536870912
  serve: {idle_stop_s: 900, max_resident: 2, ports: "18100-18199"}
  base_models:
    - name: tiny-demo                   # what callers pass as `model`
      path: ~/.lfwrap/models/tiny-llama # local folder or hub id
      template: default                 # chat template
      overrides: {learning_rate: 5.0e-3, cutoff_len: 128, lora_rank: 16}  # LLaMA-Factory keys for every job
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple:
    (tmp_path / "model").mkdir()  # a missing local model is refused before any run is planned
    settings = tiny_settings(tmp_path / "model", tmp_path / "state")
    return settings, Store(settings.database_path)


def test_settings_shape_of_the_issue(lfwrap_home: Path) -> None:
    settings = parse_settings(yaml.safe_load(ISSUE_YAML)["fine_tuning"])
    assert settings.serve.port_range == range(18100, 18200) and settings.files_max_bytes == 536870912
    entry = settings.base_model("tiny-demo")
    assert entry is not None and entry.model_path == str(Path.home() / ".lfwrap/models/tiny-llama")
    assert entry.overrides["lora_rank"] == 16
    assert settings.database_path == lfwrap_home.resolve() / "finetune" / "finetune.db"
    assert parse_settings(None).max_parallel_jobs == 1


def test_settings_from_a_gateway_yaml(tmp_path: Path) -> None:
    from wrapper.finetune.settings import load_settings

    path = tmp_path / "gateway.yaml"
    path.write_text("port: 8080\n" + ISSUE_YAML.replace("max_parallel_jobs: 1", "max_parallel_jobs: 3"))
    assert load_settings(path).max_parallel_jobs == 3
    path.write_text("fine_tuning:\n  backend: podman\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value) and "fine_tuning.backend" in str(caught.value.problems[0])


def test_settings_refuse_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {
                "serve": {"idle_stop": 1, "ports": "9-8"},
                "max_paralel_jobs": 2,
                "base_models": [{"name": "a", "path": "p", "template": "t", "overide": {}}],
            }
        )
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "fine_tuning.serve.idle_stop: unknown key (did you mean 'idle_stop_s'?)" in text
    assert "did you mean 'max_parallel_jobs'" in text and "did you mean 'overrides'" in text
    assert "fine_tuning.serve.ports" in text
    with pytest.raises(ConfigError):
        parse_settings({"base_models": [{"name": "a", "path": "p", "template": "t"}] * 2})


def test_store_is_one_wal_file_that_survives_reopening(setup: tuple) -> None:
    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    store.close()
    assert sqlite3.connect(settings.database_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = Store(settings.database_path)
    assert again.list_files(None, 10)["data"][0]["id"] == file_id


def test_upload_is_kept_with_checksum_and_converted(setup: tuple) -> None:
    settings, store = setup
    data = identity_jsonl()
    obj = files.save_upload(
        store, settings, [data[:10], data[10:]], filename="../../x.jsonl", purpose="fine-tune"
    )
    assert obj["object"] == "file" and obj["bytes"] == len(data) and obj["status"] == "processed"
    assert obj["id"].startswith("file-") and obj["filename"] == "x.jsonl"
    _, sha256, path, info = store.file_row(obj["id"])
    assert (
        sha256 == hashlib.sha256(data).hexdigest()
        and files.content_path(store, obj["id"]).read_bytes() == data
    )
    assert info["kind"] == "chat" and info["rows"] == 2 and info["problems"] == []
    converted = [json.loads(line) for line in Path(info["converted"]).read_text().splitlines()]
    assert converted[1]["messages"][1]["role"] == "assistant"
    assert files.delete_file(store, obj["id"]) == {"id": obj["id"], "object": "file", "deleted": True}
    assert not path.exists() and store.list_files(None, 10)["data"] == []
    with pytest.raises(FineTuneError) as caught:
        files.file_info(store, obj["id"])
    assert caught.value.status == 404


def test_upload_over_the_limit_or_wrong_purpose_is_refused(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, tmp_path, files_max_bytes=100)
    store = Store(settings.database_path)
    with pytest.raises(FineTuneError) as caught:
        files.save_upload(store, settings, [b"x" * 60, b"y" * 60], filename="a.jsonl", purpose="fine-tune")
    assert caught.value.status == 413 and caught.value.code == "file_too_large"
    assert list(store.files_dir.iterdir()) == [] and store.list_files(None, 5)["data"] == []
    with pytest.raises(FineTuneError, match="purpose 'assistants'"):
        files.save_upload(store, settings, [b"{}"], filename="a.jsonl", purpose="assistants")


def test_row_problems_name_row_line_and_field(setup: tuple) -> None:
    settings, store = setup
    rows = [
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        b"",
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistent", "content": "b"}]}',
        b"{not json",
        b'{"prompt": "a"}',
    ]
    obj = files.save_upload(store, settings, [b"\n".join(rows)], filename="bad.jsonl", purpose="fine-tune")
    _, info = files.file_info(store, obj["id"])
    found = [(p["row"], p["line"], p["field"]) for p in info["problems"]]
    assert found == [(2, 3, "messages[1].role"), (3, 4, "messages[1].role"), (4, 5, None), (5, 6, None)]
    assert info["rows"] == 5 and info["bad_rows"] == 4
    assert obj["status"] == "error" and obj["status_details"].startswith(
        "The file's row 2 (line 3) is malformed"
    )


def test_preference_and_tool_rows_convert_to_llamafactory_rows(setup: tuple) -> None:
    settings, store = setup
    pref = {
        "input": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    obj = files.save_upload(
        store, settings, [json.dumps(pref).encode()], filename="p.jsonl", purpose="fine-tune"
    )
    _, info = files.file_info(store, obj["id"])
    assert info["kind"] == "preference" and info["problems"] == []
    row = json.loads(Path(info["converted"]).read_text())
    assert row == {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "chosen": {"role": "assistant", "content": "good"},
        "rejected": {"role": "assistant", "content": "bad"},
    }
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    tool = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "it is 42"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    obj = files.save_upload(
        store, settings, [json.dumps(tool).encode()], filename="t.jsonl", purpose="fine-tune"
    )
    _, info = files.file_info(store, obj["id"])
    assert info["problems"] == [], info
    row = json.loads(Path(info["converted"]).read_text())
    assert row["messages"][1] == {
        "role": "function_call",
        "content": '[{"name": "f", "arguments": {"x": 1}}]',
    }
    assert json.loads(row["tools"])[0]["function"]["name"] == "f"


def test_job_request_checked_and_hyperparameters_resolved(setup: tuple) -> None:
    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    job = create_job(
        store,
        settings,
        {
            "model": "tiny-demo",
            "training_file": file_id,
            "suffix": "conch",
            "metadata": {"team": "a"},
            "seed": 7,
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {"n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": 0.5}
                },
            },
        },
    )
    assert job["id"].startswith("ftjob-") and job["status"] == "validating_files" and job["seed"] == 7
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}
    template, keys = run_config(settings, job, store.private(job["id"]), Path("/data"))
    assert template == "sft_lora" and keys["learning_rate"] == pytest.approx(2.5e-3)
    assert keys["num_train_epochs"] == 3.0 and keys["save_steps"] == 1 and keys["lora_rank"] == 16
    old = create_job(
        store, settings, {"model": "tiny-demo", "training_file": file_id, "hyperparameters": {"n_epochs": 2}}
    )  # deprecated top level
    assert old["hyperparameters"]["n_epochs"] == 2 and old["method"]["type"] == "supervised"
    dpo = create_job(
        store,
        settings,
        {
            "model": "tiny-demo",
            "training_file": file_id,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
        },
    )
    assert dpo["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
    assert run_config(settings, dpo, store.private(dpo["id"]), Path("/d"))[1]["pref_beta"] == 0.3

    refused = [
        (
            {"model": "tiny-demmo", "training_file": file_id},
            "model_not_available",
            "Did you mean 'tiny-demo'",
        ),
        ({"model": "tiny-demo", "training_file": "file-nope"}, "file_not_found", "file-nope"),
        ({"model": "tiny-demo", "training_file": file_id, "sufix": "x"}, "invalid_value", "sufix"),
        ({"model": "tiny-demo", "training_file": file_id, "suffix": "a:b"}, "invalid_value", "suffix"),
        (
            {"model": "tiny-demo", "training_file": file_id, "hyperparameters": {"n_epochs": 0}},
            "invalid_value",
            "n_epochs",
        ),
        (
            {"model": "tiny-demo", "training_file": file_id, "hyperparameters": {"beta": 0.1}},
            "invalid_value",
            "beta",
        ),
        (
            {"model": "tiny-demo", "training_file": file_id, "method": {"type": "reinforcement"}},
            "invalid_value",
            "method.type",
        ),
    ]
    for body, code, text in refused:
        with pytest.raises(FineTuneError) as caught:
            create_job(store, settings, body)
        assert caught.value.code == code and text in str(caught.value), (body, str(caught.value))


def test_pagination_after_limit_has_more(setup: tuple) -> None:
    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    ids = [
        create_job(store, settings, {"model": "tiny-demo", "training_file": file_id})["id"] for _ in range(5)
    ]
    first = store.list_jobs(None, 2)
    assert (
        [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] and first["object"] == "list"
    )
    second = store.list_jobs(first["last_id"], 2)
    assert [j["id"] for j in second["data"]] == ids[::-1][2:4] and second["has_more"]
    last = store.list_jobs(second["last_id"], 2)
    assert [j["id"] for j in last["data"]] == [ids[0]] and not last["has_more"]
    with pytest.raises(FineTuneError, match="after"):
        store.list_jobs("ftjob-unknown", 2)
    with pytest.raises(FineTuneError):
        check_limit(0)
    assert store.list_jobs(None, 10, metadata={"x": "y"})["data"] == []


def test_worker_validates_files_and_fails_a_job_naming_the_row(setup: tuple) -> None:
    settings, store = setup
    good = upload(store, settings, identity_jsonl())
    bad = upload(store, settings, identity_jsonl() + b'{"messages": [{"role": "user"}]}\n')
    ok_job = create_job(store, settings, {"model": "tiny-demo", "training_file": good})
    bad_job = create_job(
        store, settings, {"model": "tiny-demo", "training_file": good, "validation_file": bad}
    )
    dpo_job = create_job(
        store, settings, {"model": "tiny-demo", "training_file": good, "method": {"type": "dpo"}}
    )
    worker = Worker(store, settings)
    for job in (ok_job, bad_job, dpo_job):
        worker._validate(job)  # the validation pass of step(), without starting anything
    assert store.job(ok_job["id"])["status"] == "queued"
    error = store.job(bad_job["id"])["error"]
    assert error["code"] == "invalid_validation_file" and error["param"] == "validation_file"
    assert f"Validation file {bad}" in error["message"] and "row 3 (line 3)" in error["message"]
    assert "holds chat rows; method dpo needs preference rows" in store.job(dpo_job["id"])["error"]["message"]
    events = store.list_events(bad_job["id"], None, 10)["data"]
    assert events[0]["level"] == "error" and events[0]["object"] == "fine_tuning.job.event"


def test_restart_fails_an_interrupted_job_without_checkpoint(setup: tuple) -> None:
    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    job = create_job(store, settings, {"model": "tiny-demo", "training_file": file_id})
    store.update_job(job["id"], status="queued")
    run_dir = create_job_run(store, settings, store.job(job["id"]))
    assert run_dir == runs.run_path(job["id"])  # a normal run folder, named after the job
    gone = subprocess.Popen(["sleep", "0"])
    identity = process_identity(gone.pid)
    gone.wait()
    runs.update_meta(run_dir, status="running", pid=gone.pid, pgid=gone.pid, supervisor=identity)
    store.update_job(job["id"], status="running", private={"run_dir": str(run_dir)})

    worker = Worker(Store(settings.database_path), settings)  # a restarted gateway
    worker.recover()
    failed = worker.store.job(job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "job_interrupted"
    assert "before it saved any checkpoint; create the job again" in failed["error"]["message"]
    with pytest.raises(FineTuneError, match="already failed"):
        worker.cancel(job["id"])


def test_cancel_a_queued_job(setup: tuple) -> None:
    settings, store = setup
    job = create_job(
        store, settings, {"model": "tiny-demo", "training_file": upload(store, settings, identity_jsonl())}
    )
    cancelled = Worker(store, settings).cancel(job["id"])
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert not runs.run_path(job["id"]).exists()


def test_queued_job_whose_run_was_already_made_is_followed_not_refused(setup: tuple) -> None:
    settings, store = setup
    job = create_job(
        store, settings, {"model": "tiny-demo", "training_file": upload(store, settings, identity_jsonl())}
    )
    store.update_job(job["id"], status="queued")
    run_dir = create_job_run(store, settings, store.job(job["id"]))  # then the worker died
    alive = subprocess.Popen(["sleep", "30"], start_new_session=True)  # stands for its supervisor
    try:
        identity = process_identity(alive.pid)
        runs.update_meta(run_dir, status="running", pid=alive.pid, pgid=alive.pid, supervisor=identity)
        worker = Worker(store, settings)
        worker.step()
        assert store.job(job["id"])["status"] == "running"
        assert store.private(job["id"])["run_dir"] == str(run_dir)
        assert "following the job's run again" in store.list_events(job["id"], None, 1)["data"][0]["message"]
    finally:
        alive.kill()
        alive.wait()


def test_metadata_limits_and_pool_errors(setup: tuple) -> None:
    import asyncio

    from wrapper.finetune.pool import ServingPool

    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    with pytest.raises(FineTuneError, match="metadata"):
        create_job(
            store, settings, {"model": "tiny-demo", "training_file": file_id, "metadata": {"k": "v" * 513}}
        )
    job = create_job(store, settings, {"model": "tiny-demo", "training_file": file_id})
    store.update_job(job["id"], status="succeeded", fine_tuned_model=f"ft:tiny-demo::{job['id']}")

    async def ensure(model: str) -> FineTuneError:
        pool = ServingPool(store, settings)
        with pytest.raises(FineTuneError) as caught:
            await pool.ensure(model)
        await pool.shutdown()
        return caught.value

    unknown = asyncio.run(ensure("ft:tiny-demo::ftjob-none"))
    assert (unknown.status, unknown.code) == (404, "model_not_found")
    no_run = asyncio.run(ensure(f"ft:tiny-demo::{job['id']}"))  # its run folder does not exist
    assert (no_run.status, no_run.code) == (503, "model_unavailable") and job["id"] in str(no_run)
    assert store.servers() == []


def test_one_jobs_trouble_fails_that_job_only(setup: tuple) -> None:
    settings, store = setup
    file_id = upload(store, settings, identity_jsonl())
    job = create_job(store, settings, {"model": "tiny-demo", "training_file": file_id})
    other = create_job(store, settings, {"model": "tiny-demo", "training_file": file_id, "suffix": "b"})
    Path(store.private(job["id"])["train"]["converted"]).unlink()  # the disk lost the converted data
    Worker(store, settings).step()
    failed = store.job(job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal_error"
    assert "FileNotFoundError" in failed["error"]["message"]
    assert store.job(other["id"])["status"] == "queued"  # validated; waits for a free slot


def test_results_file_is_csv_and_not_training_data(setup: tuple) -> None:
    settings, store = setup
    metrics = [
        {"step": 1, "train_loss": 2.5, "total_steps": 2},
        {"step": 2, "train_loss": 1.0, "valid_loss": 1.5},
    ]
    obj = files.save_results(store, "ftjob-x", metrics)
    assert obj["purpose"] == "fine-tune-results" and obj["filename"] == "ftjob-x-step_metrics.csv"
    assert (
        files.content_path(store, obj["id"]).read_text() == "step,train_loss,valid_loss\n1,2.5,\n2,1.0,1.5\n"
    )
    with pytest.raises(FineTuneError) as caught:
        create_job(store, settings, {"model": "tiny-demo", "training_file": obj["id"]})
    assert caught.value.code == "invalid_training_file" and "purpose 'fine-tune-results'" in str(caught.value)
