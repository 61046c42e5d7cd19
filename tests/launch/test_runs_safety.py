"""Runs: nothing killed by mistake (the supervisor's identity is verified before any signal), a vanished
supervisor shows as lost, one writer per run, LLaMA-Factory killed or hung up on has a defined outcome.

LLaMA-Factory itself is replaced here by a small shell script named as a stand-in (the supervisor runs
it exactly like llamafactory-cli); the real one is killed in tests/launch/test_train_e2e.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrapper.errors import RunError
from wrapper.launch import runs
from wrapper.launch import train as launcher
from wrapper.launch.export import check_out_folder, export_run
from wrapper.launch.plan import materialize, plan_run
from wrapper.launch.process import group_alive, process_identity

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "model_name_or_path": "/models/tiny",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "dataset": "identity",
    "template": "default",
    "output_dir": "saves/x",
}
# Runs the supervisor as launch() does (own session), with a stand-in for llamafactory-cli.
SUPERVISE = """
import sys
from pathlib import Path
import wrapper.launch.supervisor as supervisor
supervisor.llamafactory_cli = lambda: sys.argv[2]
sys.exit(supervisor.supervise(Path(sys.argv[1])))
"""


def _stand_in(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "llamafactory-cli-standin"
    script.write_text("#!/bin/bash\necho 'stand-in llamafactory-cli starting'\n" + body + "\n")
    script.chmod(0o755)
    return script


def _supervise(run_dir: Path, cli: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SUPERVISE, str(run_dir), str(cli)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _bystander() -> subprocess.Popen[bytes]:
    """An unrelated process leading its own process group, as a reused pid would."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


@pytest.mark.parametrize("identity", ["none", "other_start", "other_boot"])
def test_cancel_with_a_stale_meta_kills_nothing_and_shows_lost(
    lfwrap, lfwrap_home: Path, identity: str
):
    run_dir = materialize(plan_run(CONFIG, name="stale"))
    (run_dir / "train.log").write_text("step 1\n")
    bystander = _bystander()
    try:
        real = process_identity(bystander.pid)
        assert real is not None
        recorded = {
            "none": None,
            "other_start": {**real, "start_time": real["start_time"] - 1},
            "other_boot": {**real, "boot_id": "00000000-0000-0000-0000-000000000000"},
        }[identity]
        runs.update_meta(
            run_dir, status="running", pid=bystander.pid, pgid=bystander.pid, supervisor=recorded
        )
        proc = lfwrap("runs", "cancel", "stale")
        assert proc.returncode == 0 and "Run stale is failed" in proc.stdout, proc.stderr
        listing = lfwrap("runs", check=True).stdout
        assert "stale" in listing and "running" not in listing and "failed" in listing
        assert bystander.poll() is None  # still alive: never signalled
        meta = runs.read_meta(run_dir)
        assert meta.status == "failed" and meta.error[0].startswith(runs.LOST)
        assert (run_dir / "train.log").read_text() == "step 1\n"  # log kept
        lfwrap("runs", "remove", "stale", "--yes", check=True)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_runs_list_shows_a_stale_running_run_as_lost(lfwrap, lfwrap_home: Path):
    run_dir = materialize(plan_run(CONFIG, name="rebooted"))
    bystander = _bystander()
    try:
        runs.update_meta(run_dir, status="running", pid=bystander.pid, pgid=bystander.pid)
        listing = lfwrap("runs", check=True).stdout
        assert "failed (lost)" in listing and "running" not in listing
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_killed_supervisor_shows_lost_with_its_log(lfwrap_home: Path, tmp_path: Path):
    run_dir = materialize(plan_run(CONFIG, name="orphan"))
    cli = _stand_in(tmp_path, "sleep 300")
    supervisor = _supervise(run_dir, cli)
    log = run_dir / "train.log"  # the supervisor may mark the run running a moment before it opens the log
    _wait_for(lambda: runs.read_meta(run_dir).status == "running" and log.is_file() and log.stat().st_size,
              "the run to start")
    assert launcher.refresh(run_dir).status == "running"
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    meta = launcher.refresh(run_dir)
    assert meta.status == "failed" and meta.error[0].startswith(runs.LOST)
    assert "stand-in llamafactory-cli starting" in (run_dir / "train.log").read_text()
    # the stand-in still runs (it inherited the run lock): the run cannot be resumed or removed yet
    with pytest.raises(RunError, match="is active"):
        launcher.remove_run(run_dir)
    # runs cancel stops what is left of the run (its lock proves it is ours), and only that
    bystander = _bystander()
    try:
        meta = launcher.cancel_run(run_dir, grace=5)
        assert meta.error[-1] == "`lfwrap runs cancel` stopped 2 leftover process(es)."  # bash and sleep
        assert not group_alive(supervisor.pid) and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert launcher.remove_run(run_dir) is None and not run_dir.exists()


def test_cancel_verifies_and_stops_a_live_supervisor(lfwrap_home: Path, tmp_path: Path):
    run_dir = materialize(plan_run(CONFIG, name="live"))
    supervisor = _supervise(run_dir, _stand_in(tmp_path, "sleep 300"))
    _wait_for(lambda: runs.read_meta(run_dir).status == "running", "the run to start")
    meta = runs.read_meta(run_dir)
    assert meta.supervisor == process_identity(supervisor.pid)
    assert launcher.cancel_run(run_dir, grace=5).status == "cancelled"
    assert supervisor.wait(timeout=30) == 1 and not group_alive(supervisor.pid)


def test_llamafactory_killed_by_sigkill_fails_the_run_with_the_reason(lfwrap_home: Path, tmp_path: Path):
    run_dir = materialize(plan_run(CONFIG, name="killed"))
    cli = _stand_in(tmp_path, "echo 'step 3/10 loss 1.2'\nkill -KILL $$")
    assert _supervise(run_dir, cli).wait(timeout=60) == 1
    meta = runs.read_meta(run_dir)
    assert meta.status == "failed" and meta.exit_code == -signal.SIGKILL
    assert meta.error[0].startswith("LLaMA-Factory was killed by SIGKILL")
    log = (run_dir / "train.log").read_text()
    assert "step 3/10 loss 1.2" in log and "killed by SIGKILL" in log


def test_sighup_does_not_stop_the_run(lfwrap_home: Path, tmp_path: Path):
    """A closed terminal: the followed run goes on and records its end (README, "Train, follow, serve")."""
    run_dir = materialize(plan_run(CONFIG, name="hup"))
    flag = tmp_path / "go"
    supervisor = _supervise(run_dir, _stand_in(tmp_path, f"while [ ! -e {flag} ]; do sleep 0.05; done"))
    _wait_for(lambda: runs.read_meta(run_dir).status == "running", "the run to start")
    os.killpg(supervisor.pid, signal.SIGHUP)  # what the kernel sends a session when its terminal closes
    time.sleep(0.3)
    assert runs.read_meta(run_dir).status == "running"
    flag.touch()
    assert supervisor.wait(timeout=60) == 0
    assert runs.read_meta(run_dir).status == "succeeded"


def _finished_with_checkpoint(name: str) -> Path:
    run_dir = materialize(plan_run(CONFIG, name=name))
    (Path(runs.read_meta(run_dir).output_dir) / "checkpoint-2").mkdir(parents=True)
    runs.update_meta(run_dir, status="failed", ended=runs.now())
    return run_dir


def test_resume_is_refused_while_the_run_is_active(lfwrap, lfwrap_home: Path):
    run_dir = _finished_with_checkpoint("busy")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from wrapper.launch import runs; "
         "assert runs.RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(300)",
         str(run_dir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        proc = lfwrap("train", "--name", "busy", "--resume")
        assert proc.returncode == 1 and "is active" in proc.stderr and "Traceback" not in proc.stderr
        assert runs.read_meta(run_dir).status == "failed"  # untouched
    finally:
        holder.kill()
        holder.wait()


_RESUMER = """
import sys
from pathlib import Path
from wrapper.errors import RunError
from wrapper.launch.train import prepare_resume
try:
    prepare_resume(Path(sys.argv[1]))
    print("resumed")
except RunError as exc:
    print("refused:", exc)
"""


def test_of_concurrent_resumes_exactly_one_wins(lfwrap_home: Path):
    run_dir = _finished_with_checkpoint("twice")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _RESUMER, str(run_dir)], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outcomes = [proc.communicate(timeout=120)[0].split(":")[0].strip() for proc in procs]
    assert sorted(outcomes) == ["refused", "refused", "refused", "resumed"]
    assert runs.read_meta(run_dir).status == "queued"


def test_export_out_refuses_a_non_empty_folder(lfwrap, lfwrap_home: Path, tmp_path: Path):
    run_dir = materialize(plan_run(CONFIG, name="done"))
    runs.update_meta(run_dir, status="succeeded")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = lfwrap("export", "done", "--out", str(out))
    assert proc.returncode == 1 and "is not empty" in proc.stderr and "--force" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(RunError, match="is a file"):
        export_run("done", out / "notes.txt")
    check_out_folder(tmp_path / "new")  # missing: fine
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")  # empty: fine


def test_an_output_folder_that_cannot_be_created_is_refused_before_launch(lfwrap, lfwrap_home: Path,
                                                                          tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = lfwrap("train", "-t", "sft_lora", "--name", "nowhere", "--set", f"output_dir={blocker}/out")
    assert proc.returncode == 1 and "cannot be created" in proc.stderr and "Traceback" not in proc.stderr
    assert not (lfwrap_home / "runs" / "nowhere").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_an_unwritable_output_folder_is_refused_before_launch(lfwrap, lfwrap_home: Path, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = lfwrap("train", "-t", "sft_lora", "--name", "ro", "--set", f"output_dir={locked}/out")
    assert proc.returncode == 1 and "is not writable" in proc.stderr


def test_too_little_disk_for_the_checkpoints_is_refused_before_launch(lfwrap, lfwrap_home: Path,
                                                                      tmp_path: Path):
    import shutil

    model = tmp_path / "big-model"
    model.mkdir()
    weights = model / "model.safetensors"
    try:  # a sparse file: 8 TiB of apparent size, no blocks used
        with weights.open("wb") as handle:
            handle.truncate(8 * 2**40)
    except OSError:
        pytest.skip("this file system has no sparse files that large")
    free = shutil.disk_usage(tmp_path).free
    if free > 8 * 2**40 * 0.05 * 2:
        pytest.skip("this disk is large enough for the estimate")
    args = ["--model", str(model), "--set", "template=default", "--set", f"output_dir={tmp_path}/out"]
    proc = lfwrap("train", "-t", "sft_lora", "--name", "big", *args)
    assert proc.returncode == 1 and "Not enough free disk for run big" in proc.stderr, proc.stderr
    assert "finetuning_type lora" in proc.stderr and not (lfwrap_home / "runs" / "big").exists()
    proc = lfwrap("train", "-t", "sft_lora", "--name", "small", *args, "--dry-run")
    assert proc.returncode == 1 and "Not enough free disk" in proc.stderr  # a dry run says so too
