"""A real distributed run: LLaMA-Factory's torchrun path with two CPU processes talking over gloo.

The distributed options go through `apply`; the run is a plain `llamafactory-cli train` so this
checks exactly what LLaMA-Factory does with the environment lfwrap produces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wrapper.launch.distributed import DistributedOptions, apply

STEPS = 3


@pytest.mark.e2e
def test_torchrun_two_cpu_processes_train_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    from wrapper.datasets.registry import prepare_dataset_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {
        "model_name_or_path": str(tiny_model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_target": "all",
        "dataset": "identity",
        "dataset_dir": str(prepare_dataset_dir()),
        "template": "default",
        "cutoff_len": 64,
        "per_device_train_batch_size": 1,
        "max_steps": STEPS,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(run_dir / "output"),
        "overwrite_output_dir": True,
    }
    config, env = apply(DistributedOptions(gpus=[], nproc_per_node=2), config, {}, run_dir)
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "2" and config["ddp_backend"] == "gloo"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    cli = Path(sys.executable).parent / "llamafactory-cli"
    # LLaMA-Factory starts `torchrun` by name: the environment's bin folder must be on PATH.
    path = f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        [str(cli), "train", "config.yaml"],
        cwd=run_dir,
        env={**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # Each of the two torchrun workers reports its rank and the world size.
    rank_line = r"Process rank: (\d+), world size: (\d+), device: cpu[:\d]*, distributed training: True"
    ranks = re.findall(rank_line, log)
    assert sorted(ranks) == [("0", "2"), ("1", "2")], log[-4000:]
    progress = (run_dir / "output" / "trainer_log.jsonl").read_text(encoding="utf-8")
    entries = [json.loads(line) for line in progress.splitlines()]
    assert entries[-1]["current_steps"] == entries[-1]["total_steps"] == STEPS
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
