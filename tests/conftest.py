"""Shared fixtures. Every test gets its own LFWRAP_HOME so no test sees another's state."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_standin import engine  # noqa: F401  (the Docker Engine-API stand-in fixture)
from fixtures_models import *  # noqa: F401,F403  (tiny_model, identity_adapter)

from wrapper.extras import missing

ROOT = Path(__file__).resolve().parent.parent
# Markers of tests that need an optional extra (pyproject.toml): skipped where it is not installed, so
# the core package with the `test` extra alone runs `pytest -m "not e2e"` green. An e2e test runs the
# real LLaMA-Factory, so it needs the `local` extra too.
EXTRA_MARKERS = {"local": "local", "e2e": "local", "rag": "rag", "rag_dense": "rag-dense"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, extra in EXTRA_MARKERS.items():
        gone = missing(extra)
        if not gone:
            continue
        skip = pytest.mark.skip(reason=f"needs the `{extra}` extra ({', '.join(gone)} missing)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


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


@pytest.fixture
def standin() -> Iterator[tuple[Any, str]]:
    """The stand-in upstream API server (tests/gateway_standin.py) on 127.0.0.1: (app, base URL)."""
    from gateway_standin import StandIn
    from gateway_support import serving

    app = StandIn()
    with serving(app) as server:
        yield app, server.url
