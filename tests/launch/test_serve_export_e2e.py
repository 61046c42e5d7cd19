"""Serve the trained identity run over HTTP, and export it to a merged model (real LLaMA-Factory)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION, IdentityRun

from wrapper.launch import runs

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chat(url: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    messages = [{"role": "user", "content": IDENTITY_QUESTION}]
    body = {"model": "conch", "messages": messages, "do_sample": False}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_serve_cli_answers_with_the_trained_identity(identity_run: IdentityRun, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "LFWRAP_HOME": str(identity_run.home), "HF_HUB_OFFLINE": "1"}
    out = (tmp_path / "serve.out").open("w+")
    cli = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main", "serve", "identity", "--port", str(port),
         "--api-key", "sk-test", "--model-name", "conch"],
        stdout=out, stderr=subprocess.STDOUT, env=env, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while f"Serving at {url}/v1" not in (tmp_path / "serve.out").read_text():
            assert cli.poll() is None, (tmp_path / "serve.out").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert _chat(url).status_code == 401  # the key is required
        response = _chat(url, "sk-test")
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == IDENTITY_ANSWER
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-test"}).json()
        assert [model["id"] for model in models["data"]] == ["conch"]
        serve_yaml = (identity_run.run_dir / "serve.yaml").read_text()
        assert f"adapter_name_or_path: {identity_run.run_dir / 'output'}" in serve_yaml
    finally:
        cli.send_signal(signal.SIGINT)  # Ctrl-C
        cli.wait(timeout=60)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/v1/models", timeout=2)  # the server went with it
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            assert not (b"api" in cmdline and f"API_PORT={port}".encode() in environ), "server left behind"


def test_export_then_transformers_gives_the_same_answer(identity_run: IdentityRun, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wrapper.launch.export import export_run

    monkeypatch.setenv("LFWRAP_HOME", str(identity_run.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = export_run("identity", tmp_path / "merged")
    assert (target / "model.safetensors").is_file()
    assert not (target / "adapter_config.json").exists()  # standalone: no adapter needed

    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": IDENTITY_QUESTION}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=64, do_sample=False)
    answer = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip() == IDENTITY_ANSWER
    assert runs.read_meta(identity_run.run_dir).status == "succeeded"


def test_export_of_an_unknown_run_is_refused(lfwrap, identity_run: IdentityRun) -> None:
    proc = lfwrap("export", "nope", env={"LFWRAP_HOME": str(identity_run.home)})
    assert proc.returncode == 1 and "No run named 'nope'" in proc.stderr
