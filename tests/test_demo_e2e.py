"""`make demo` end to end: tiny model, identity fill, training, API server, gateway, openai client."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXPECTED = "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"


@pytest.mark.e2e
def test_demo_answers_through_the_gateway(lfwrap_home):
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.demo"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LFWRAP_HOME": str(lfwrap_home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "6/6 asking through the gateway with the openai client" in proc.stdout
    assert f"Answer: {EXPECTED}" in proc.stdout.splitlines()
    # The run is recorded as succeeded, and no LLaMA-Factory server is left behind.
    meta = (lfwrap_home / "runs" / "demo-conch" / "meta.json").read_text(encoding="utf-8")
    assert '"succeeded"' in meta
    leftover = subprocess.run(["pgrep", "-f", f"{lfwrap_home}.*serve"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
