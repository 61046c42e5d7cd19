"""`lfwrap train` end to end on the real LLaMA-Factory and the tiny model (CPU)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from fixtures_models import IdentityRun

from wrapper.launch import runs
from wrapper.launch import train as launcher
from wrapper.launch.plan import materialize, plan_run
from wrapper.launch.process import group_members
from wrapper.render import render_template

pytestmark = pytest.mark.e2e
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def test_identity_training_end_to_end(identity_run: IdentityRun, lfwrap) -> None:
    run_dir = identity_run.run_dir
    meta = runs.read_meta(run_dir)
    assert meta.status == "succeeded" and meta.exit_code == 0 and meta.started and meta.ended
    assert meta.template == "sft_lora" and meta.llamafactory_version == "0.9.5"
    output = run_dir / "output"
    assert (output / "adapter_model.safetensors").is_file()
    assert (output / "adapter_config.json").is_file()
    rows = [json.loads(line) for line in (output / "trainer_log.jsonl").read_text().splitlines()]
    assert rows[-1]["current_steps"] == rows[-1]["total_steps"] == 150
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses[-1] < losses[0] / 20, losses  # it learned the rows, not just their argmax
    # the summary is what the progress reader saw: steps, final loss, adapter, plot, next commands
    assert "Run identity succeeded: 150/150 steps, final loss" in identity_run.stdout
    assert f"adapter:   {output}" in identity_run.stdout
    assert f"loss plot: {output / 'training_loss.png'}" in identity_run.stdout
    assert "$ lfwrap serve identity" in identity_run.stdout
    # the run directory holds the exact config and the data it used
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["dataset_dir"] == str(run_dir) and config["output_dir"] == str(output)
    assert (config["lora_rank"], config["num_train_epochs"], config["template"]) == (16, 150.0, "default")
    data = json.loads((run_dir / "data" / "identity_demo" / "identity_demo.json").read_text())
    assert [row["instruction"] for row in data] == ["hi", "请问你是谁"]
    assert "train" in (run_dir / "train.log").read_text()
    table = lfwrap("runs", env={"LFWRAP_HOME": str(identity_run.home)}, check=True).stdout
    assert "identity" in table and "succeeded" in table and "150/150" in table


def _tiny_sets(tiny_model: Path) -> list[str]:
    return ["--model", str(tiny_model), "--set", "template=default", "--set", "cutoff_len=128",
            "--set", "gradient_accumulation_steps=1"]


def test_dpo_few_steps_then_resume(lfwrap, tiny_model: Path, lfwrap_home: Path) -> None:
    args = ["train", "--template", "dpo_lora", "--dataset", "dpo_demo", *_tiny_sets(tiny_model),
            "--set", "max_steps=3", "--set", "save_steps=2", "--set", "logging_steps=1",
            "--set", "per_device_train_batch_size=2", "--name", "dpo"]
    proc = lfwrap(*args, env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "Run dpo succeeded: 3/3 steps" in proc.stdout
    output = lfwrap_home / "runs" / "dpo" / "output"
    assert (output / "adapter_model.safetensors").is_file()
    assert runs.last_checkpoint(output) == output / "checkpoint-3"

    proc = lfwrap("train", "--name", "dpo", "--resume", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "Resuming run dpo from checkpoint-3" in proc.stderr
    config = yaml.safe_load((lfwrap_home / "runs" / "dpo" / "config.yaml").read_text())
    assert config["resume_from_checkpoint"] == str(output / "checkpoint-3")
    assert "Resuming training from" in (lfwrap_home / "runs" / "dpo" / "train.log").read_text()
    assert runs.read_meta(lfwrap_home / "runs" / "dpo").status == "succeeded"


def test_cancel_a_detached_run(lfwrap, tiny_model: Path, lfwrap_home: Path) -> None:
    proc = lfwrap("train", "--template", "sft_lora", *_tiny_sets(tiny_model), "--set", "logging_steps=1",
                  "--set", "num_train_epochs=100000", "--name", "long", "--detach", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "started in the background" in proc.stdout
    run_dir = lfwrap_home / "runs" / "long"
    trainer_log = run_dir / "output" / "trainer_log.jsonl"
    deadline = time.monotonic() + 300
    while not trainer_log.is_file():  # wait until it really trains
        assert runs.read_meta(run_dir).status in ("queued", "running")
        assert time.monotonic() < deadline, (run_dir / "train.log").read_text()[-2000:]
        time.sleep(0.5)
    meta = runs.read_meta(run_dir)
    assert meta.status == "running" and meta.pgid
    assert len(group_members(meta.pgid)) >= 2  # the supervisor and LLaMA-Factory

    proc = lfwrap("runs", "cancel", "long")
    assert proc.returncode == 0, proc.stderr
    assert "Run long is cancelled." in proc.stdout
    meta = runs.read_meta(run_dir)
    assert meta.status == "cancelled" and meta.ended
    assert group_members(meta.pgid) == []
    for pid in os.listdir("/proc"):  # nothing of this run left anywhere, in any group
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert str(run_dir).encode() not in cmdline


def test_bad_dataset_path_is_refused_clearly(lfwrap, tiny_model: Path, tmp_path: Path) -> None:
    proc = lfwrap("train", "--template", "sft_lora", *_tiny_sets(tiny_model),
                  "--set", f"dataset_dir={tmp_path / 'nowhere'}", env=OFFLINE)
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_file_fails_with_the_error_line(lfwrap_home: Path, tiny_model: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rendered = render_template("sft_lora", ["template=default", "cutoff_len=128"],
                               extra={"model_name_or_path": str(tiny_model), "dataset": "alpaca_demo"})
    run_dir = materialize(plan_run(rendered.data, name="broken", template="sft_lora"))
    (run_dir / "data" / "alpaca_demo" / "alpaca_demo.json").unlink()  # the data vanished before launch
    outcome = launcher.follow(run_dir, process=launcher.launch(run_dir))
    meta = outcome.meta
    assert meta.status == "failed" and meta.exit_code not in (0, None)
    assert len(meta.error) <= 3 and any("alpaca_demo" in line for line in meta.error), meta.error
    assert not any(line.startswith(("Traceback", "File ")) for line in meta.error)
