"""Exposure defaults: what lfwrap refuses or warns about before putting a server on a network, and
the API servers it starts logging no request content (API_VERBOSE=0)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from wrapper.errors import LaunchError


def test_serve_on_a_public_address_needs_an_api_key(lfwrap) -> None:
    proc = lfwrap("serve", "--model", "/nowhere", "--host", "0.0.0.0")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Refusing to serve on 0.0.0.0 without --api-key" in proc.stderr
    assert "Starting LLaMA-Factory" not in proc.stderr  # refused before anything started


def test_webui_on_a_public_address_warns_that_it_has_no_authentication(lfwrap) -> None:
    with socket.socket() as sock:  # a taken port stops it right after the warning
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = lfwrap("webui", "--host", "0.0.0.0", "--port", str(port))
    assert proc.returncode == 2  # the taken port: a usage error
    assert "warning: LLaMA Board has no authentication" in proc.stderr
    quiet = lfwrap("webui", "--image", "x:1")  # loopback (the default): no warning
    assert "no authentication" not in quiet.stderr


@pytest.mark.local
def test_api_servers_lfwrap_starts_do_not_log_request_bodies(monkeypatch, tmp_path: Path) -> None:
    from wrapper.launch import serve

    seen: dict[str, Any] = {}

    def fake_spawn(cmd: list[str], *, cwd: Path, log_path: Path, env: dict[str, str]) -> Any:
        seen.update(env)
        raise LaunchError("stop here")

    monkeypatch.setattr(serve, "spawn", fake_spawn)
    with pytest.raises(LaunchError):
        serve.start_api_server({"model_name_or_path": "m"}, config_path=tmp_path / "serve.yaml")
    assert seen["API_VERBOSE"] == "0"
