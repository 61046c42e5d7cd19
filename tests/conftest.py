"""Shared fixtures. Every test gets its own LFWRAP_HOME so no test sees another's state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_standin import engine  # noqa: F401  (the Docker Engine-API stand-in fixture)
from fixtures_models import *  # noqa: F401,F403  (tiny_model, identity_adapter)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def lfwrap_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("lfwrap_home")
    monkeypatch.setenv("LFWRAP_HOME", str(home))
    monkeypatch.setenv("LFWRAP_CACHE_DIR", str(home.parent / f"{home.name}-cache"))
    # validate refuses uncached hub ids under HF_HUB_OFFLINE=1: tests that want it set it themselves
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


def run_lfwrap(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `lfwrap` entry point in a subprocess (same interpreter), capturing output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    if check and proc.returncode != 0:
        command = " ".join(args)
        raise AssertionError(f"lfwrap {command} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def lfwrap():
    return run_lfwrap
