"""Fine-tuning through the gateway's HTTP API, end to end: `lfwrap gateway` as a real process on
127.0.0.1 with a `fine_tuning:` block, the official openai client, the real LLaMA-Factory training the
tiny model and serving the result under its ft: name, `lfwrap jobs` talking to the same gateway.

One training run is shared by the first two tests (in file order): the full path, then the idle server
stopped and started again on the next call, and SIGTERM stopping it. The last test restarts a gateway
mid-queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import run_lfwrap
from finetune_helpers import TINY_OVERRIDES, identity_jsonl
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION
from gateway_support import free_port
from openai import OpenAI

from wrapper.finetune.store import Store
from wrapper.gateway.keys import KeyStore
from wrapper.launch import runs
from wrapper.launch.process import group_members

pytestmark = pytest.mark.e2e


@dataclass
class Gateway:
    home: Path
    config: Path
    key: str
    url: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LFWRAP_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}

    def start(self) -> Gateway:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.home / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wrapper.cli.main",
                "gateway",
                "--config",
                str(self.config),
                "--port",
                str(port),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, (self.home / "gateway.log").read_text()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=600)

    def jobs_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"LFWRAP_HOME": str(self.home), "LFWRAP_GATEWAY_URL": self.url, "OPENAI_API_KEY": self.key}
        return run_lfwrap("jobs", *args, env=env, timeout=60)

    def store(self) -> Store:
        return Store(self.home / "ft" / "finetune.db")


def make_gateway(home: Path, tiny_model: Path, idle_stop_s: float = 900) -> Gateway:
    home.mkdir(parents=True, exist_ok=True)
    base = {"path": str(tiny_model), "template": "default"}
    settings = {
        "keys_db": str(home / "keys.db"),
        "fine_tuning": {
            "backend": "local",
            "max_parallel_jobs": 1,
            "files_max_bytes": 1 << 20,
            "serve": {"idle_stop_s": idle_stop_s, "max_resident": 1, "ports": "18100-18199"},
            "base_models": [
                {**base, "name": "tiny-demo", "overrides": TINY_OVERRIDES},
                {**base, "name": "tiny-ckpt", "overrides": {**TINY_OVERRIDES, "save_steps": 2}},
            ],
            "database": str(home / "ft" / "finetune.db"),
        },
    }
    config = home / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    store = KeyStore(home / "keys.db")
    key = store.create()[1]
    store.close()
    return Gateway(home, config, key)


def _wait(condition: Any, what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.3)
    return found


def _no_process_mentions(text: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return False
            except OSError:
                continue
    return True


def _ask(client: OpenAI, model: str) -> str | None:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": IDENTITY_QUESTION}],
        extra_body={"do_sample": False},
    )
    return reply.choices[0].message.content


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Gateway, Any]]:
    """A gateway (idle_stop_s 3) and a job trained through it with the openai client's three calls."""
    gateway = make_gateway(tmp_path_factory.mktemp("ft_http_home"), tiny_model, idle_stop_s=3).start()
    client = gateway.client()
    try:
        training_file = client.files.create(file=("identity.jsonl", identity_jsonl()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-demo",
            training_file=training_file.id,
            suffix="conch",
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 150, "batch_size": 2}},
            },
        )
        assert job.status == "validating_files"
        done = _wait(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and j,
            "the job to finish",
            600,
        )
        yield gateway, done
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


def test_upload_fine_tune_and_call_the_fine_tuned_model(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, job = trained
    client = gateway.client()
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-demo:conch:{job.id}" and job.trained_tokens
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert len(metrics) == 150 and metrics[0].data["step"] == 150 and metrics[0].data["train_loss"] < 0.5
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [150, 100, 50]
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # the client pages through all
    assert len(events) > 150 and len({e.id for e in events}) == len(events)
    messages = [e.message for e in events if e.type == "message"]
    assert messages[0] == "The job has successfully completed" and "Fine-tuning job queued" in messages
    (results,) = job.result_files
    csv_lines = client.files.content(results).text.splitlines()
    assert csv_lines[0] == "step,train_loss,valid_loss" and len(csv_lines) == 151
    run_config = (gateway.home / "runs" / job.id / "config.yaml").read_text()
    assert "num_train_epochs: 150.0" in run_config and "learning_rate: 0.005" in run_config

    assert _ask(client, job.fine_tuned_model) == IDENTITY_ANSWER  # the pool starts its server on demand
    with pytest.raises(openai.NotFoundError) as info:
        _ask(client, f"ft:tiny-demo:conch:{job.id}x")
    assert info.value.code == "model_not_found"

    monkeypatch.setenv("LFWRAP_HOME", str(gateway.home))
    table = run_lfwrap("runs", check=True).stdout  # the job is a normal run folder
    assert job.id in table and "succeeded" in table
    listed = gateway.jobs_cli("list")
    assert listed.returncode == 0 and job.id in listed.stdout and "succeeded" in listed.stdout
    shown = gateway.jobs_cli("show", job.id).stdout
    assert f"ft:tiny-demo:conch:{job.id}" in shown and '"n_epochs": 150' in shown
    events = gateway.jobs_cli("events", job.id, "--limit", "3").stdout.splitlines()
    assert len(events) == 3 and events[-1].endswith("The job has successfully completed")
    missing = gateway.jobs_cli("show", "ftjob-nope")
    assert missing.returncode != 0 and "No fine-tuning job with id 'ftjob-nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_idle_server_restarts_on_the_next_call_and_sigterm_stops_it(trained) -> None:
    gateway, job = trained
    store = gateway.store()
    try:
        # idle_stop_s 3: the reaper stops the server the previous call started
        _wait(lambda: store.servers() == [], "the idle server to stop", 60)
        assert _no_process_mentions(str(gateway.home / "ft" / "serve"))
        assert _ask(gateway.client(), job.fine_tuned_model) == IDENTITY_ANSWER  # held until it answers
        ((model, _, pid, _, _),) = store.servers()
        assert model == job.fine_tuned_model and group_members(pid)
        stream = gateway.client().chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": IDENTITY_QUESTION}],
            extra_body={"do_sample": False},
            stream=True,
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == IDENTITY_ANSWER
        assert {c.model for c in chunks} == {job.fine_tuned_model}

        assert gateway.stop(signal.SIGTERM) == 0  # the gateway stops every server it started
        assert group_members(pid) == [] and store.servers() == []
        assert _no_process_mentions(str(gateway.home / "ft" / "serve"))
    finally:
        store.close()


def test_restart_mid_queue_then_cancel(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(tmp_path / "home", tiny_model).start()
    monkeypatch.setenv("LFWRAP_HOME", str(gateway.home))
    client = gateway.client()
    try:
        train = client.files.create(file=("identity.jsonl", identity_jsonl()), purpose="fine-tune")
        long = {"training_file": train.id, "hyperparameters": {"n_epochs": 100000, "batch_size": 2}}
        first = client.fine_tuning.jobs.create(model="tiny-ckpt", suffix="first", **long)
        second = client.fine_tuning.jobs.create(model="tiny-demo", suffix="second", **long)
        output = runs.run_path(first.id) / "output"
        _wait(lambda: (output / "checkpoint-2" / "trainer_state.json").is_file(), "a checkpoint")
        assert client.fine_tuning.jobs.retrieve(first.id).status == "running"
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"  # max_parallel_jobs 1
        supervisor = runs.read_meta(runs.run_path(first.id)).pid

        gateway.stop(signal.SIGKILL)  # the gateway dies; its training runs on (its own session)
        assert supervisor and group_members(supervisor)
        gateway.start()
        client = gateway.client()
        assert [f.id for f in client.files.list()] == [train.id]
        assert [j.id for j in client.fine_tuning.jobs.list()] == [second.id, first.id]
        assert client.fine_tuning.jobs.retrieve(first.id).status == "running"  # followed again, as documented
        _wait(
            lambda: any(
                "following the job's run again" in e.message
                for e in client.fine_tuning.jobs.list_events(first.id)
            ),
            "the restart event",
            60,
        )
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"

        pgid = runs.read_meta(runs.run_path(first.id)).pgid
        cancelled = gateway.jobs_cli("cancel", first.id)
        assert cancelled.returncode == 0 and f"Job {first.id} is cancelled." in cancelled.stdout
        assert pgid and group_members(pgid) == [] and _no_process_mentions(str(runs.run_path(first.id)))
        _wait(
            lambda: client.fine_tuning.jobs.retrieve(second.id).status == "running", "the queue to go on", 60
        )
        job = client.fine_tuning.jobs.cancel(second.id)
        assert job.status == "cancelled" and job.finished_at
        assert _no_process_mentions(str(runs.run_path(second.id)))
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.cancel(second.id)
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
