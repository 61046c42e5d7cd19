"""The launcher's pieces without LLaMA-Factory running: run directories, progress, errors, groups."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from wrapper.errors import LaunchError, RunError, UsageError
from wrapper.launch import runs
from wrapper.launch import train as launcher
from wrapper.launch.local import (
    check_extras,
    cli_python,
    llamafactory_cli,
    missing_modules,
    spawn,
)
from wrapper.launch.plan import materialize, plan_run
from wrapper.launch.process import group_members, stop_group
from wrapper.launch.progress import TrainerLog, error_lines

HAND_CONFIG = {
    "model_name_or_path": "/models/tiny",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "dataset": "identity,alpaca_demo",
    "template": "default",
    "output_dir": "saves/x",
}


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 81, "a..b", "名字"])
def test_bad_run_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="not allowed"):
        runs.run_path(name)


def test_run_path_stays_in_runs_folder(lfwrap_home: Path) -> None:
    assert runs.run_path("conch-v1.2") == (lfwrap_home / "runs" / "conch-v1.2").resolve()


def test_trainer_log_reads_as_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "trainer_log.jsonl"
    reader = TrainerLog(path)
    assert reader.poll().step == 0  # no file yet
    row = {"current_steps": 10, "total_steps": 150, "loss": 2.5, "percentage": 6.67,
           "elapsed_time": "0:00:01", "remaining_time": "0:00:14"}
    text = json.dumps(row) + "\n" + '{"current_steps": 20, "total_st'
    path.write_text(text)
    progress = reader.poll()
    assert (progress.step, progress.total, progress.loss, progress.remaining) == (10, 150, 2.5, "0:00:14")
    with path.open("a") as handle:  # the half-written line completes; a row without loss keeps the last
        handle.write('eps": 150, "percentage": 13.3, "remaining_time": "0:00:12"}\n')
    progress = reader.poll()
    assert (progress.step, progress.loss, progress.remaining) == (20, 2.5, "0:00:12")


def test_error_lines_pick_the_exception_not_the_traceback() -> None:
    log = "\n".join([
        "[INFO] loading dataset",
        "Traceback (most recent call last):",
        '  File "/x/loader.py", line 10, in load',
        "    raise ValueError(f'File {path} not found.')",
        "ValueError: File /data/missing.json not found.",
        "[INFO] cleaning up",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train failed",
    ])
    assert error_lines(log) == [
        "ValueError: File /data/missing.json not found.",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train failed",
    ]
    assert error_lines("just\nsome\noutput\nlines") == ["some", "output", "lines"]


@pytest.mark.local
def test_create_run_copies_the_datasets_and_fixes_paths(lfwrap_home: Path) -> None:
    run_dir = materialize(plan_run(HAND_CONFIG, name="hand", template="sft_lora", overrides=["a=1"]))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["dataset_dir"] == str(run_dir)
    assert config["output_dir"] == str(run_dir / "output")
    info = json.loads((run_dir / "dataset_info.json").read_text())
    assert sorted(info) == ["alpaca_demo", "identity"]
    for entry in info.values():
        copied = run_dir / entry["file_name"]
        assert copied.is_file() and copied.is_relative_to(run_dir / "data")
    meta = runs.read_meta(run_dir)
    assert (meta.status, meta.template, meta.overrides) == ("queued", "sft_lora", ["a=1"])
    assert meta.backend == "local"
    assert meta.command == ["llamafactory-cli", "train", "config.yaml"]
    assert meta.llamafactory_version == "0.9.5"
    with pytest.raises(RunError, match="already exists"):
        materialize(plan_run(HAND_CONFIG, name="hand"))


def test_unknown_dataset_leaves_no_run_behind(lfwrap_home: Path) -> None:
    with pytest.raises(Exception, match="identiy"):
        materialize(plan_run({**HAND_CONFIG, "dataset": "identiy"}, name="typo"))
    assert not (lfwrap_home / "runs" / "typo").exists()


def test_resume_needs_a_checkpoint(lfwrap_home: Path) -> None:
    run_dir = materialize(plan_run(HAND_CONFIG, name="r"))
    runs.update_meta(run_dir, status="failed")
    with pytest.raises(RunError, match="no checkpoint-N"):
        launcher.prepare_resume(run_dir)
    for step in (5, 40, 10):
        (run_dir / "output" / f"checkpoint-{step}").mkdir(parents=True)
    assert launcher.prepare_resume(run_dir).name == "checkpoint-40"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["resume_from_checkpoint"] == str(run_dir / "output" / "checkpoint-40")
    assert runs.read_meta(run_dir).status == "queued"


def test_missing_llamafactory_cli_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match=r"pip install 'lfwrap\[local\]'"):
        llamafactory_cli()


def test_stop_group_leaves_no_process(tmp_path: Path) -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    process = spawn([sys.executable, "-c", script], cwd=tmp_path, log_path=tmp_path / "log", env={})
    while len(group_members(process.pid)) < 2:  # the child and its grandchild
        assert process.poll() is None
    stop_group(process, grace=5)
    assert group_members(process.pid) == []


def test_cancel_of_a_queued_run(lfwrap_home: Path) -> None:
    run_dir = materialize(plan_run(HAND_CONFIG, name="q"))
    assert launcher.cancel_run(run_dir).status == "cancelled"
    with pytest.raises(RunError, match="already ended"):
        launcher.cancel_run(run_dir)


def test_dry_run_prints_config_and_command_and_keeps_nothing(lfwrap, lfwrap_home: Path) -> None:
    proc = lfwrap("train", "--template", "sft_lora", "--set", "lora_rank=4", "--name", "dry", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout.split("# launch command")[0])
    assert config["lora_rank"] == 4 and config["dataset"] == "identity"
    assert "llamafactory-cli train config.yaml" in proc.stdout
    assert "placeholders" in proc.stderr  # the bundled identity set is unfilled
    assert not (lfwrap_home / "runs" / "dry").exists()


def test_dry_run_docker_shows_the_container_spec(lfwrap) -> None:
    proc = lfwrap("train", "--template", "sft_lora", "--backend", "docker", "--gpus", "0,1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout.split("# container spec (Engine API POST /containers/create)")[1])
    assert spec["Image"] == "hiyouga/llamafactory:latest"
    assert spec["Cmd"] == ["llamafactory-cli", "train", "config.yaml"]
    assert spec["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0", "1"]
    config = yaml.safe_load(proc.stdout.split("# container spec")[0])
    assert config["dataset_dir"] == "/app/run" and config["output_dir"] == "/app/run/output"


def test_cli_errors_are_one_sentence(lfwrap) -> None:
    proc = lfwrap("train", "--template", "sft_lora", "--name", "../x")
    assert proc.returncode == 2 and "not allowed" in proc.stderr and "Traceback" not in proc.stderr
    proc = lfwrap("train", "--resume")
    assert proc.returncode == 2 and "--resume needs --name" in proc.stderr
    for command in (("serve", "nope"), ("export", "nope")):  # refused before any "Starting ..." line
        proc = lfwrap(*command)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: No run named 'nope'"), proc.stderr
    proc = lfwrap("runs", "show", "nope")
    assert proc.returncode == 1 and "No run named 'nope'" in proc.stderr
    proc = lfwrap("serve")
    assert proc.returncode == 2 and "either a run name or --model" in proc.stderr


def test_runs_table_lists_runs(lfwrap, lfwrap_home: Path) -> None:
    assert "No runs yet" in lfwrap("runs", check=True).stdout
    materialize(plan_run(HAND_CONFIG, name="listed", template="sft_lora"))
    out = lfwrap("runs", check=True).stdout
    assert "listed" in out and "queued" in out and "sft_lora" in out


@pytest.mark.parametrize("command", ["train", "runs", "export", "serve"])
def test_help_ends_with_examples(lfwrap, command: str) -> None:
    text = lfwrap(command, "--help", check=True).stdout
    assert f"$ lfwrap {command}" in text


def test_supervisor_records_a_failed_launch(lfwrap_home: Path, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from wrapper.launch import supervisor

    run_dir = materialize(plan_run(HAND_CONFIG, name="nolf"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no llamafactory-cli anywhere
    monkeypatch.setenv("PATH", str(tmp_path))
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert supervisor.supervise(run_dir) == 1
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    meta = runs.read_meta(run_dir)
    assert meta.status == "failed" and meta.ended and "lfwrap[local]" in meta.error[0]
    assert "lfwrap[local]" in (run_dir / "train.log").read_text()


def test_runs_logs_prints_the_log_and_follow_stops_at_the_end(lfwrap, lfwrap_home: Path) -> None:
    run_dir = materialize(plan_run(HAND_CONFIG, name="logged"))
    (run_dir / "train.log").write_text("step one\nValueError: boom\n")
    runs.update_meta(run_dir, status="failed")
    proc = lfwrap("runs", "logs", "logged", "--follow", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "step one\nValueError: boom\n"
    assert "[run logged failed]" in proc.stderr
    shown = lfwrap("runs", "show", "logged", check=True).stdout
    assert shown.startswith("Run logged: failed (local backend)\n"), shown
    assert f"log        {run_dir / 'train.log'}" in shown and "$ lfwrap runs logs logged" in shown
    meta = json.loads(lfwrap("runs", "show", "logged", "--json", check=True).stdout)
    assert meta == runs.read_meta(run_dir).to_dict()


@pytest.mark.local
@pytest.mark.skipif(find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_missing_deepspeed_is_refused_before_anything_starts(lfwrap, lfwrap_home: Path) -> None:
    proc = lfwrap("train", "--template", "sft_lora", "--deepspeed", "z2", "--name", "ds")
    assert proc.returncode == 1, proc.stderr
    assert f"This run needs deepspeed, which {Path(sys.executable).parent}/python" in proc.stderr
    assert "pip install deepspeed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (lfwrap_home / "runs" / "ds").exists()  # nothing queued that will never run
    plan = lfwrap("train", "--template", "sft_lora", "--deepspeed", "z2", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "# note: This run needs deepspeed" in plan.stdout
    assert "FORCE_TORCHRUN=1" in plan.stdout and "llamafactory-cli train config.yaml" in plan.stdout


def test_extras_are_looked_up_in_the_python_that_runs_llamafactory_cli(tmp_path: Path) -> None:
    # An interpreter without site-packages: yaml is importable here but not there.
    bare = tmp_path / "python3"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    bare.chmod(0o755)
    cli = tmp_path / "llamafactory-cli"
    cli.write_text(f"#!{bare}\nprint('hi')\n")
    assert cli_python(str(cli)) == str(bare)
    assert missing_modules(["yaml", "json"], str(bare)) == ["yaml"]
    assert missing_modules(["yaml", "json"], sys.executable) == []
    with pytest.raises(LaunchError, match=rf"needs ray, which {bare} cannot import\. ray: pip install"):
        check_extras({}, {"USE_RAY": "1"}, str(cli))
    check_extras({"deepspeed": ""}, {"USE_RAY": "0"}, str(cli))  # asks for neither
    # Another virtual environment on the same base Python is still another environment.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    assert missing_modules(["yaml", "json"], str(tmp_path / "venv" / "bin" / "python")) == ["yaml"]
    script = tmp_path / "no-shebang"
    script.write_text("print('hi')\n")
    assert cli_python(str(script)) == sys.executable


def test_runs_remove_deletes_finished_runs_only(lfwrap, lfwrap_home: Path, tmp_path: Path) -> None:
    done = materialize(plan_run(HAND_CONFIG, name="done"))
    (done / "output" / "adapter_model.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (done / "output" / "adapter_model.safetensors").write_bytes(b"\0" * 2_000_000)
    runs.update_meta(done, status="succeeded", ended=runs.now())
    elsewhere = materialize(plan_run(HAND_CONFIG, name="elsewhere"))
    (tmp_path / "out").mkdir()
    runs.update_meta(elsewhere, status="failed", ended=runs.now(), output_dir=str(tmp_path / "out"))
    queued = materialize(plan_run(HAND_CONFIG, name="queued"))

    asked = lfwrap("runs", "remove", "done")  # no terminal to ask on: --yes is required
    assert asked.returncode == 2 and "add --yes to delete without asking" in asked.stderr
    assert "done (2.0 MB)" in asked.stderr and done.is_dir()
    typo = lfwrap("runs", "remove", "done", "dnoe", "--yes")  # every name is checked before anything goes
    assert typo.returncode == 1 and "No run named 'dnoe'" in typo.stderr and done.is_dir()
    busy = lfwrap("runs", "remove", "queued", "--yes")
    assert busy.returncode == 1
    assert "is queued; cancel it first with `lfwrap runs cancel queued`" in busy.stderr
    assert queued.is_dir()

    proc = lfwrap("runs", "remove", "done", "elsewhere", "--yes", check=True)
    assert proc.stdout.splitlines() == [
        "Removed run done (2.0 MB).",
        "Removed run elsewhere (0.0 MB).",
        f"  its output_dir {tmp_path / 'out'} is outside the run folder and was left in place.",
    ]
    assert not done.exists() and not elsewhere.exists() and (tmp_path / "out").is_dir()
