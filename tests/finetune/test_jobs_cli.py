"""`lfwrap jobs`: the requests it sends and how it prints answers, against an httpx.MockTransport (the
gateway's fine-tuning endpoints are tested end to end where they are served)."""

from __future__ import annotations

import json

import httpx
from click.testing import CliRunner

from wrapper.cli.jobs_cmd import jobs
from wrapper.cli.main import main

JOB = {
    "id": "ftjob-abc",
    "object": "fine_tuning.job",
    "status": "running",
    "model": "tiny-demo",
    "fine_tuned_model": None,
    "training_file": "file-x",
    "hyperparameters": {"n_epochs": 3},
    "created_at": 1700000000,
    "finished_at": None,
    "trained_tokens": None,
    "error": None,
}


def _run(args: list[str], handler, env: dict[str, str] | None = None):
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    result = CliRunner().invoke(
        jobs, args, obj={"transport": httpx.MockTransport(record)}, env=env or {}, catch_exceptions=True
    )
    return result, seen


def test_list_sends_limit_after_and_key() -> None:
    page = {"object": "list", "data": [JOB], "has_more": True}
    result, seen = _run(
        [
            "--gateway-url",
            "http://gw:9000/v1/",
            "--api-key",
            "sk-1",
            "list",
            "--limit",
            "1",
            "--after",
            "ftjob-z",
        ],
        lambda r: httpx.Response(200, json=page),
    )
    assert result.exit_code == 0, result.output
    (request,) = seen
    assert request.method == "GET" and request.url.path == "/v1/fine_tuning/jobs"
    assert request.url.host == "gw" and request.url.port == 9000
    assert dict(request.url.params) == {"limit": "1", "after": "ftjob-z"}
    assert request.headers["authorization"] == "Bearer sk-1"
    assert "ftjob-abc  running" in result.output and "lfwrap jobs list --after ftjob-abc" in result.output


def test_env_vars_show_events_and_cancel() -> None:
    env = {"LFWRAP_GATEWAY_URL": "http://10.0.0.5:8080", "OPENAI_API_KEY": "sk-env"}
    result, seen = _run(["show", "ftjob-abc"], lambda r: httpx.Response(200, json=JOB), env)
    assert result.exit_code == 0 and "status:           running" in result.output
    assert str(seen[0].url) == "http://10.0.0.5:8080/v1/fine_tuning/jobs/ftjob-abc"
    assert seen[0].headers["authorization"] == "Bearer sk-env"

    events = {
        "object": "list",
        "has_more": False,
        "data": [
            {"id": "e2", "created_at": 1700000002, "level": "info", "message": "Step 2/2: training loss=0.1"},
            {"id": "e1", "created_at": 1700000001, "level": "info", "message": "Fine-tuning job started"},
        ],
    }
    result, seen = _run(
        ["events", "ftjob-abc", "--limit", "2"], lambda r: httpx.Response(200, json=events), env
    )
    assert seen[0].url.path == "/v1/fine_tuning/jobs/ftjob-abc/events" and seen[0].url.params["limit"] == "2"
    lines = result.output.splitlines()
    assert lines[0].endswith("Fine-tuning job started") and lines[1].endswith("training loss=0.1")

    result, seen = _run(
        ["cancel", "ftjob-abc"], lambda r: httpx.Response(200, json={**JOB, "status": "cancelled"}), env
    )
    assert seen[0].method == "POST" and seen[0].url.path == "/v1/fine_tuning/jobs/ftjob-abc/cancel"
    assert result.output == "Job ftjob-abc is cancelled.\n"


def test_openai_error_becomes_one_sentence(capsys) -> None:
    error = {
        "error": {
            "message": "No fine-tuning job with id 'ftjob-x'.",
            "type": "invalid_request_error",
            "param": "job_id",
            "code": "job_not_found",
        }
    }
    result, _ = _run(["show", "ftjob-x"], lambda r: httpx.Response(404, json=error))
    assert "refused GET /v1/fine_tuning/jobs/ftjob-x (404): No fine-tuning job with id 'ftjob-x'." in str(
        result.exception
    )
    # through the real entry point: one line on stderr, exit 1, no traceback (nothing listens on port 9)
    try:
        main(["jobs", "--gateway-url", "http://127.0.0.1:9", "list"])
    except SystemExit as exit_:
        assert exit_.code == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("Error: Could not reach the gateway at http://127.0.0.1:9") and "Traceback" not in err
    )


def test_help_ends_with_examples() -> None:
    for args in ([], ["list"], ["show"], ["events"], ["cancel"]):
        result = CliRunner().invoke(jobs, [*args, "--help"])
        assert result.exit_code == 0 and "$ lfwrap jobs" in result.output.strip().splitlines()[-1]
    result, _ = _run(["list", "--json"], lambda r: httpx.Response(200, json={"object": "list", "data": []}))
    assert json.loads(result.output) == {"object": "list", "data": []}
