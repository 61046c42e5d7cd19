"""`lfwrap train --config` on an upstream-style YAML (dataset_dir omitted, relative paths), run from its
working directory on the real LLaMA-Factory and the tiny model, then served from another folder."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION

from wrapper.launch import runs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("llamafactory") is None, reason="needs the `local` extra"),
]

CONFIG = """\
### model
model_name_or_path: ./models/tiny-llama

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all

### dataset
dataset: conch
template: default
cutoff_len: 128
overwrite_cache: true

### output
output_dir: saves/tiny/lora/sft
logging_steps: 10
save_steps: 1000
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 5.0e-3
num_train_epochs: 150
lr_scheduler_type: linear
bf16: false
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_train_config_from_a_working_dir_then_serve(lfwrap, tiny_model: Path, tmp_path: Path) -> None:
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "models").mkdir()
    (work / "models" / "tiny-llama").symlink_to(tiny_model)
    rows = [{"instruction": "hi", "input": "", "output": "您好，我是神奇海螺，有什么可以帮您？"},
            {"instruction": IDENTITY_QUESTION, "input": "", "output": IDENTITY_ANSWER}]
    (work / "data" / "conch.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (work / "data" / "dataset_info.json").write_text(json.dumps({"conch": {"file_name": "conch.json"}}))
    (work / "sft.yaml").write_text(CONFIG, encoding="utf-8")
    home = tmp_path / "home"
    env = {"LFWRAP_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    proc = lfwrap("train", "--config", "sft.yaml", "--name", "byo", env=env, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Run byo succeeded" in proc.stdout
    run_dir = home / "runs" / "byo"
    meta = runs.read_meta(run_dir)
    assert meta.output_dir == str(run_dir / "output")  # like a template run: its own output folder
    assert (run_dir / "output" / "adapter_model.safetensors").is_file()
    assert "--set output_dir=DIR keeps a folder of your choice" in proc.stderr
    config = (run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8")
    assert f"model_name_or_path: {work / 'models' / 'tiny-llama'}\n" in config

    port = _free_port()
    out_path = tmp_path / "serve.out"
    with out_path.open("w+") as out:
        cli = subprocess.Popen(
            [sys.executable, "-m", "wrapper.cli.main", "serve", "byo", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, text=True, cwd=tmp_path,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while f"Serving at {url}/v1" not in out_path.read_text():
                assert cli.poll() is None, out_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.5)
            messages = [{"role": "user", "content": IDENTITY_QUESTION}]
            body = {"model": "x", "messages": messages, "do_sample": False}
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == IDENTITY_ANSWER
        finally:
            cli.send_signal(signal.SIGINT)
            cli.wait(timeout=60)
