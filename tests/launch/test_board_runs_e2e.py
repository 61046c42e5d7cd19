"""A run trained in LLaMA Board, served, exported and evaluated by its `lfwrap runs` name (real
LLaMA-Factory, tiny model); a CLI run listed by LLaMA Board's own list_checkpoints beside it.

The run folder is laid out as LLaMA-Factory 0.9.5's webui/runner.py leaves it after training:
training_args.yaml (its arguments, paths relative to LLaMA Board's working directory),
llamaboard_config.yaml, and what `llamafactory-cli train` wrote there (the session's identity adapter)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fixtures_models import IDENTITY_ANSWER, IDENTITY_AUTHOR, IDENTITY_NAME, IDENTITY_QUESTION

pytestmark = pytest.mark.e2e

RUN = "train_2026-12-02-10-00-00"
NAME = f"Custom/lora/{RUN}"  # a local model folder is LLaMA Board's "Custom" model


def _llamaboard_run(home: Path, adapter: Path, model: Path, dataset: str) -> Path:
    """What LLaMA Board's Train tab leaves for the demo settings: its runner's argument dict after
    _clean_cmd (no None/False/"" values), then the training's own files."""
    folder = home / "saves" / "Custom" / "lora" / RUN
    shutil.copytree(adapter, folder)  # adapter, trainer_log.jsonl, training_loss.png ...
    args = {
        "stage": "sft", "do_train": True, "model_name_or_path": str(model), "preprocessing_num_workers": 16,
        "finetuning_type": "lora", "template": "default", "flash_attn": "auto", "dataset_dir": "data",
        "dataset": dataset, "cutoff_len": 128, "learning_rate": 5e-3, "num_train_epochs": 150.0,
        "max_samples": 100000, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "linear", "max_grad_norm": 1.0, "logging_steps": 10, "save_steps": 1000,
        "warmup_steps": 0, "packing": False, "enable_thinking": True, "report_to": "none",
        "output_dir": f"saves/Custom/lora/{RUN}", "plot_loss": True, "trust_remote_code": True,
        "ddp_timeout": 180000000, "include_num_input_tokens_seen": True, "lora_rank": 16, "lora_alpha": 32,
        "lora_dropout": 0, "lora_target": "all",
    }  # fmt: skip
    (folder / "training_args.yaml").write_text(yaml.safe_dump(args), encoding="utf-8")
    form = {"top.model_name": "Custom", "top.finetuning_type": "lora", "train.dataset": [dataset]}
    (folder / "llamaboard_config.yaml").write_text(yaml.safe_dump(form), encoding="utf-8")
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_llamaboard_run_is_served_exported_and_evaluated(
    lfwrap_home: Path, lfwrap, identity_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from wrapper.demo import prepare_identity_demo

    dataset = prepare_identity_demo(IDENTITY_NAME, IDENTITY_AUTHOR)
    folder = _llamaboard_run(lfwrap_home, identity_adapter, tiny_model, dataset)
    before = _snapshot(folder)
    env = {"HF_HUB_OFFLINE": "1"}
    listed = [line.split() for line in lfwrap("runs", check=True).stdout.splitlines()]
    assert [NAME, "llamaboard", "succeeded"] in [row[:3] for row in listed]

    # A finished CLI run on the same local model joins LLaMA Board's checkpoint list beside its own run:
    # asked of LLaMA-Factory's list_checkpoints, from LLaMA Board's working directory, while the rest runs.
    _finished_cli_run(lfwrap_home, "conch", tiny_model)
    from wrapper import webui

    workdir = webui.prepare_workdir()
    webui.show_runs()
    listing = subprocess.Popen(
        [sys.executable, "-c", "import json; from llamafactory.webui.control import list_checkpoints; "
         "print(json.dumps(list_checkpoints('Custom', 'lora').choices))"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = _free_port()
    log = tmp_path / "serve.out"
    server = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main", "serve", NAME, "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **env}, text=True,
    )  # fmt: skip
    evaluation = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main", "eval", NAME, "--dataset", dataset, "--no-base", "--json",
         "--max-new-tokens", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env}, text=True,
    )  # fmt: skip
    try:  # the export and the evaluation run while the server loads
        merged = lfwrap("export", NAME, env=env)
        assert merged.returncode == 0, merged.stderr
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while f"Serving at {url}/v1" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        body = {
            "model": "x",
            "messages": [{"role": "user", "content": IDENTITY_QUESTION}],
            "do_sample": False,
        }
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == IDENTITY_ANSWER
        stdout, stderr = evaluation.communicate(timeout=600)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        if evaluation.poll() is None:
            evaluation.kill()
            evaluation.wait()

    side = lfwrap_home / "llamaboard" / NAME
    served = yaml.safe_load((side / "serve.yaml").read_text())
    assert (served["model_name_or_path"], served["adapter_name_or_path"]) == (str(tiny_model), str(folder))
    target = side / "merged"
    assert f"Merged model written to {target}" in merged.stdout
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()

    assert evaluation.returncode == 0, stderr
    metrics = json.loads(stdout)
    assert (metrics["run"], metrics["samples"]) == (NAME, 2)
    assert metrics["tuned"]["exact_match"] == 100.0, metrics  # both trained rows come back word for word
    [report] = (side / "eval").glob("*/report.html")
    assert (report.parent / "loss.png").is_file()  # from the board run's trainer_log.jsonl

    listed, errors = listing.communicate(timeout=300)
    assert listing.returncode == 0, errors
    assert sorted(name for name, _ in json.loads(listed)) == ["conch", RUN]

    assert _snapshot(folder) == before  # LLaMA Board's folder: read, never written


def _finished_cli_run(home: Path, name: str, model: Path) -> None:
    """A succeeded run as `lfwrap train` leaves it: meta.json, config.yaml, output/ with the adapter."""
    from wrapper.launch import runs

    output = home / "runs" / name / "output"
    output.mkdir(parents=True)
    (output / "adapter_config.json").write_text("{}")
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    config = {"model_name_or_path": str(model), "finetuning_type": "lora", "output_dir": str(output)}
    (output.parent / "config.yaml").write_text(yaml.safe_dump(config))
    runs.write_meta(output.parent, runs.RunMeta(name=name, output_dir=str(output), status="succeeded"))
