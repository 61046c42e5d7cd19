"""`lfwrap gateway` as users start it: a real process, a real stand-in upstream, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from gateway_standin import REPLY, StandIn
from gateway_support import free_port, serving, wait_until

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


@contextmanager
def gateway_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wrapper.cli.main", "gateway", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_quick_start_requires_keys_then_serves(lfwrap):
    app = StandIn()
    with serving(app) as up, gateway_process("--upstream", up.url, "--model-name", "conch") as (proc, url):
        refused = httpx.post(url + "/v1/chat/completions", json=CHAT)
        assert refused.status_code == 401 and "lfwrap keys create" in refused.json()["error"]["message"]
        key = lfwrap("keys", "create", check=True).stdout.strip()
        time.sleep(1.1)  # the running gateway re-reads the key store at most once a second
        resp = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == REPLY
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert "model conch -> " + up.url in output
    assert "every request gets 401 until you run `lfwrap keys create`" in output
    key_id = key.removeprefix("sk-lfw-")[:8]
    assert f"key_id={key_id} POST /v1/chat/completions model=conch status=200" in output
    assert key not in output


def test_graceful_shutdown_lets_a_stream_finish():
    app = StandIn(chunks=6, interval_s=0.3)
    with (
        serving(app) as up,
        gateway_process("--upstream", up.url, "--model-name", "conch", "--open") as (proc, url),
    ):
        events: list[str] = []

        def stream() -> None:
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
            ) as r:
                events.extend(line for line in r.iter_lines() if line.startswith("data: "))

        caller = threading.Thread(target=stream)
        caller.start()
        assert wait_until(lambda: app.seen != [])
        proc.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    assert events[-1] == "data: [DONE]"
    assert (
        "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == REPLY
    )
    assert app.streams_finished == 1


def test_usage_errors_are_one_sentence(lfwrap):
    half = lfwrap("gateway", "--upstream", "http://127.0.0.1:8000")
    assert half.returncode == 2 and "--upstream and --model-name go together" in half.stderr
    none = lfwrap("gateway")
    assert none.returncode == 2 and "No models to serve" in none.stderr
    exposed = lfwrap(
        "gateway", "--upstream", "http://127.0.0.1:8000", "--model-name", "m", "--open", "--host", "0.0.0.0"
    )
    assert exposed.returncode == 2 and "Refusing to run without API keys on 0.0.0.0" in exposed.stderr
    placeholder = lfwrap(
        "gateway", "--upstream", "http://127.0.0.1:8000", "--model-name", "m", "--upstream-key", "changeme"
    )
    assert placeholder.returncode == 1 and "placeholder" in placeholder.stderr
    for result in (half, none, exposed, placeholder):
        assert "Traceback" not in result.stderr


def test_help_ends_with_examples(lfwrap):
    text = lfwrap("gateway", "--help").stdout
    assert text.rstrip().splitlines()[-1].strip().startswith("$ ")
    assert "$ lfwrap gateway --upstream http://127.0.0.1:8000 --model-name conch" in text
    assert "answers 401 to every request until you" in text
