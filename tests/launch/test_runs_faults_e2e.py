"""Training faults on the real LLaMA-Factory and the tiny model (CPU): killed, and hung up on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrapper.launch import runs
from wrapper.launch import train as launcher
from wrapper.launch.process import group_members

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _args(tiny_model: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--template", "sft_lora", "--model", str(tiny_model), "--set", "template=default",
            "--set", "cutoff_len=128", "--set", "logging_steps=1", "--set", "gradient_accumulation_steps=1",
            "--name", name, *extra]


def _wait_training(run_dir: Path) -> runs.RunMeta:
    trainer_log = run_dir / "output" / "trainer_log.jsonl"
    deadline = time.monotonic() + 300
    while not trainer_log.is_file():  # wait until it really trains
        assert runs.read_meta(run_dir).status in ("queued", "running"), runs.read_meta(run_dir).error
        assert time.monotonic() < deadline, (run_dir / "train.log").read_text()[-2000:]
        time.sleep(0.3)
    return runs.read_meta(run_dir)


def test_llamafactory_sigkilled_fails_the_run_with_reason_and_log(lfwrap, tiny_model: Path,
                                                                  lfwrap_home: Path) -> None:
    proc = lfwrap(*_args(tiny_model, "oom", "--set", "num_train_epochs=100000", "--detach"), env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    run_dir = lfwrap_home / "runs" / "oom"
    meta = _wait_training(run_dir)
    assert meta.supervisor is not None
    trainers = [pid for pid in group_members(meta.pgid) if pid != meta.supervisor["pid"]]
    assert trainers
    for pid in trainers:  # as the kernel's out-of-memory killer would
        os.kill(pid, signal.SIGKILL)
    outcome = launcher.follow(run_dir)
    meta = outcome.meta
    assert meta.status == "failed" and meta.exit_code == -signal.SIGKILL, meta
    assert meta.error[0].startswith("LLaMA-Factory was killed by SIGKILL"), meta.error
    log = (run_dir / "train.log").read_text()
    assert "killed by SIGKILL" in log and "llamafactory" in log.lower()
    deadline = time.monotonic() + 30
    while group_members(meta.pgid):  # the supervisor exits right after recording the end
        assert time.monotonic() < deadline
        time.sleep(0.1)
    shown = lfwrap("runs", check=True).stdout
    assert "oom" in shown and "failed" in shown


def test_sighup_to_a_followed_run_leaves_the_run_going(tiny_model: Path, lfwrap_home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **OFFLINE}
    follower = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main",
         *_args(tiny_model, "hup", "--set", "num_train_epochs=100000")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # as from a terminal: a runner that ignores SIGHUP (nohup, CI) would pass that on to the child
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    run_dir = lfwrap_home / "runs" / "hup"
    deadline = time.monotonic() + 120
    while not (run_dir / "meta.json").is_file():
        assert time.monotonic() < deadline and follower.poll() is None
        time.sleep(0.1)
    _wait_training(run_dir)
    os.killpg(follower.pid, signal.SIGHUP)  # the terminal closed: its session's processes get SIGHUP
    follower.wait(timeout=30)  # the following ends ...
    at_hangup = launcher.result(run_dir).progress.step
    try:  # ... and the run itself goes on training
        deadline = time.monotonic() + 120
        while launcher.result(run_dir).progress.step <= at_hangup:
            assert runs.read_meta(run_dir).status == "running", runs.read_meta(run_dir).error
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        launcher.cancel_run(run_dir)
    assert launcher.follow(run_dir).meta.status == "cancelled"
