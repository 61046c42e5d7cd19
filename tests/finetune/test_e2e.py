"""Fine-tuning jobs end to end, below the HTTP layer: real SQLite, real LLaMA-Factory on the tiny model.
The full path (train, metrics, checkpoints, results file, the pool serving the ft: model, idle stop and
restart) runs through the gateway in tests/finetune/test_http_e2e.py, with one training run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from finetune_helpers import TINY_OVERRIDES, drive, identity_jsonl, tiny_settings, upload
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION

from wrapper.finetune.jobs import create_job
from wrapper.finetune.store import Store
from wrapper.finetune.worker import Worker
from wrapper.launch import runs
from wrapper.launch.process import group_members

pytestmark = pytest.mark.e2e


def _no_process_mentions(text: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                return False
    return True


def test_malformed_file_fails_the_job_naming_the_row(tiny_model: Path, tmp_path: Path) -> None:
    settings = tiny_settings(tiny_model, tmp_path)
    store = Store(settings.database_path)
    bad = (
        identity_jsonl()
        + b'{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}\n'
    )
    file_id = upload(store, settings, bad)
    job = create_job(store, settings, {"model": "tiny-demo", "training_file": file_id})
    done = drive(Worker(store, settings), job["id"], ("failed",), timeout=30)
    error = done["error"]
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    assert f"Training file {file_id}" in error["message"] and "row 3 (line 3)" in error["message"]
    assert "messages[1].role" in error["message"]
    assert not runs.run_path(job["id"]).exists()  # nothing was launched


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_restart_adopts_resumes_then_cancel_stops_everything(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpointing = {
        "name": "tiny-ckpt",
        "path": str(tiny_model),
        "template": "default",
        "overrides": {**TINY_OVERRIDES, "save_steps": 2},
    }
    settings = tiny_settings(tiny_model, tmp_path)
    settings = tiny_settings(
        tiny_model, tmp_path, base_models=[settings.base_models[0].model_dump(), checkpointing]
    )
    store = Store(settings.database_path)
    file_id = upload(store, settings, identity_jsonl())
    long = {"training_file": file_id, "hyperparameters": {"n_epochs": 100000, "batch_size": 2}}
    first = create_job(store, settings, {**long, "model": "tiny-ckpt", "suffix": "first"})
    second = create_job(store, settings, {**long, "model": "tiny-demo", "suffix": "second"})
    worker = Worker(store, settings)
    drive(worker, first["id"], ("running",))
    run_dir = runs.run_path(first["id"])
    output = run_dir / "output"
    _wait(lambda: worker.step() or (output / "checkpoint-2" / "trainer_state.json").is_file(), "a checkpoint")
    assert store.job(second["id"])["status"] == "queued"  # max_parallel_jobs: 1
    supervisor = runs.read_meta(run_dir).pid
    assert supervisor

    # the gateway restarts: a new store and worker on the same file; the run went on and is adopted
    store.close()
    store = Store(settings.database_path)
    assert {j["id"] for j in store.list_jobs(None, 10)["data"]} == {first["id"], second["id"]}
    assert store.list_files(None, 10)["data"][0]["id"] == file_id
    worker = Worker(store, settings)
    worker.recover()
    worker.step()
    assert store.job(first["id"])["status"] == "running" and runs.read_meta(run_dir).pid == supervisor
    assert store.job(second["id"])["status"] == "queued"
    assert len(store.list_checkpoints(first["id"], None, 100)["data"]) >= 1

    # the training dies while the gateway is down (frozen, then killed: a checkpoint may be half written)
    os.killpg(supervisor, signal.SIGSTOP)
    os.killpg(supervisor, signal.SIGKILL)
    _wait(lambda: not group_members(supervisor), "the killed group to go", 30)
    worker = Worker(Store(settings.database_path), settings)
    worker.recover()
    store = worker.store

    def resume_event() -> dict | None:
        found = [
            e for e in store.list_events(first["id"], None, 100)["data"] if "resumed from" in e["message"]
        ]
        return found[0] if found else None

    # at once, or on a later step once the killed run's last process released the run's lock
    _wait(lambda: worker.step() or resume_event() is not None, "the resume", 90)
    assert store.job(first["id"])["status"] == "running", store.job(first["id"])["error"]
    event = resume_event()
    assert event is not None and event["level"] == "warn"
    checkpoint = event["message"].rsplit(" ", 1)[-1]
    assert (output / checkpoint / "trainer_state.json").is_file()
    assert not [p for p in output.glob("checkpoint-*") if not (p / "trainer_state.json").is_file()]
    assert runs.read_meta(run_dir).pid != supervisor
    _wait(lambda: worker.step() or "Resuming training from" in (run_dir / "train.log").read_text(), "resume")

    # cancel it: cancelled, and nothing of the run left; the queue goes on with the second job
    pgid = runs.read_meta(run_dir).pgid
    cancelled = worker.cancel(first["id"])
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert pgid and group_members(pgid) == [] and _no_process_mentions(str(run_dir))
    assert runs.read_meta(run_dir).status == "cancelled"
    assert store.list_events(first["id"], None, 1)["data"][0]["message"] == "The job was cancelled"
    running = drive(worker, second["id"], ("running",))
    second_dir = runs.run_path(running["id"])
    assert worker.cancel(second["id"])["status"] == "cancelled"
    assert _no_process_mentions(str(second_dir))


def test_dpo_job_with_a_validation_file(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = tiny_settings(tiny_model, tmp_path)
    store = Store(settings.database_path)
    rows = [
        {
            "input": {
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}]
            },
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
        for question, good in (("hi", "hello"), (IDENTITY_QUESTION, IDENTITY_ANSWER))
    ]
    data = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)
    train, valid = upload(store, settings, data), upload(store, settings, data, "valid.jsonl")
    job = create_job(
        store,
        settings,
        {
            "model": "tiny-demo",
            "training_file": train,
            "validation_file": valid,
            "seed": 3,
            "method": {
                "type": "dpo",
                "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 2, "beta": 0.2}},
            },
        },
    )
    done = drive(Worker(store, settings), job["id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == f"ft:tiny-demo::{job['id']}"  # no suffix: an empty part
    metrics = [e["data"] for e in store.list_events(job["id"], None, 100)["data"] if e["type"] == "metrics"]
    assert any("valid_loss" in data for data in metrics) and any(d.get("train_loss") for d in metrics)
    config = (runs.run_path(job["id"]) / "config.yaml").read_text()
    assert "stage: dpo" in config and "pref_beta: 0.2" in config and "eval_dataset: validation" in config
    checkpoints = store.list_checkpoints(job["id"], None, 10)["data"]
    assert checkpoints and checkpoints[0]["step_number"] == 2 and "valid_loss" in checkpoints[0]["metrics"]
