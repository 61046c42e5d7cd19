"""lfwrap webui: the working folder LLaMA Board reads, the portable data folder, the Docker spec, the CLI."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from engine_standin import EngineStandIn

from wrapper import home, webui
from wrapper.errors import LaunchError, UsageError


def test_workdir_links_datasets_and_saves(lfwrap_home: Path) -> None:
    workdir = webui.prepare_workdir()
    assert workdir == lfwrap_home / "webui"
    assert (workdir / "data").is_symlink() and (workdir / "saves").is_symlink()
    assert (workdir / "data").resolve() == (lfwrap_home / "datasets").resolve()
    assert (workdir / "saves").resolve() == (lfwrap_home / "saves").resolve()
    # What LLaMA Board reads as data/dataset_info.json: every bundled dataset, files present.
    info = json.loads((workdir / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"identity", "alpaca_demo", "sharegpt_demo", "dpo_demo", "kto_demo"} <= set(info)
    for entry in info.values():
        assert (workdir / "data" / entry["file_name"]).is_file()
    assert webui.prepare_workdir() == workdir  # idempotent


def test_workdir_refuses_to_replace_a_real_folder(lfwrap_home: Path) -> None:
    (lfwrap_home / "webui" / "saves").mkdir(parents=True)
    with pytest.raises(LaunchError, match="real folder"):
        webui.prepare_workdir()


def test_export_data_dir_is_portable_and_keeps_user_datasets(lfwrap, tmp_path: Path) -> None:
    lfwrap("data", "identity", "--name", "神奇海螺", "--author", "蟹堡王", check=True)
    out = tmp_path / "data"
    info_path = webui.export_data_dir(out)
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["identity"]["file_name"] == "user/identity.json"  # the filled set wins
    assert info["alpaca_demo"]["file_name"] == "bundled/alpaca_demo.json"
    assert info["dpo_demo"]["ranking"] is True
    assert "神奇海螺" in (out / "user" / "identity.json").read_text(encoding="utf-8")
    assert (out / "bundled").is_dir() and not any(p.name != ".gitkeep" for p in (out / "bundled").iterdir())
    # Mount the bundled folder at bundled/ as the containers do: every entry resolves.
    shutil.copytree(home.bundled_datasets_dir(), out / "bundled", dirs_exist_ok=True)
    for name, entry in info.items():
        assert not Path(entry["file_name"]).is_absolute(), name
        assert (out / entry["file_name"]).is_file(), name


def _binds(host_config: dict) -> list[str]:
    """The Engine API's bind mounts written as `docker run -v` would: source:target:ro|rw."""
    mounts = host_config["Mounts"]
    return sorted(f"{m['Source']}:{m['Target']}:{'ro' if m['ReadOnly'] else 'rw'}" for m in mounts)


def test_docker_spec_matches_the_compose_webui(lfwrap_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_x7Kq2")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    data, saves, hf = (lfwrap_home / "d", lfwrap_home / "s", lfwrap_home.parent / "hf")
    for folder in (data, saves):
        folder.mkdir()
    setup = dict(image="hiyouga/llamafactory:0.9.5", host="127.0.0.1", port=7861, data_dir=data, saves=saves,
                 hf_cache=hf)
    spec = webui.docker_spec(*webui.docker_setup(**setup))
    assert spec["Image"] == "hiyouga/llamafactory:0.9.5"
    assert spec["Cmd"] == ["llamafactory-cli", "webui"]
    assert spec["WorkingDir"] == "/app" and spec["HostConfig"]["IpcMode"] == "host"
    assert spec["HostConfig"]["PortBindings"] == {"7860/tcp": [{"HostIp": "127.0.0.1", "HostPort": "7861"}]}
    assert dict(item.split("=", 1) for item in spec["Env"]) == {
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7860", "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_TOKEN": "hf_x7Kq2", "HF_HOME": "/root/.cache/huggingface"}
    assert _binds(spec["HostConfig"]) == sorted([
        f"{data}:/app/data:ro",
        f"{home.bundled_datasets_dir().resolve()}:/app/data/bundled:ro",
        f"{saves}:/app/saves:rw",
        f"{hf}:/root/.cache/huggingface:rw",
    ])
    [gpus] = spec["HostConfig"]["DeviceRequests"]
    assert (gpus["Count"], gpus["Capabilities"]) == (-1, [["gpu"]])
    no_gpu = webui.docker_spec(*webui.docker_setup(**setup, gpus=False))
    assert "DeviceRequests" not in no_gpu["HostConfig"]


def test_docker_spec_keeps_the_backends_mount_checks(lfwrap_home: Path, tmp_path: Path) -> None:
    (lfwrap_home / "s").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    setup = webui.docker_setup(image="i", host="127.0.0.1", port=1, data_dir=outside, saves=lfwrap_home / "s",
                               hf_cache=lfwrap_home.parent / "hf")
    with pytest.raises(LaunchError, match=f"Refusing to mount {outside} into the container"):
        webui.docker_spec(*setup)
    home_cache = webui.docker_setup(image="i", host="127.0.0.1", port=1, data_dir=lfwrap_home / "s",
                                    saves=lfwrap_home / "s", hf_cache=Path.home())
    with pytest.raises(LaunchError, match="Refusing to mount the Hugging Face cache"):
        webui.docker_spec(*home_cache)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_docker_backend_through_the_sdk(engine: EngineStandIn, lfwrap_home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(lfwrap_home / "hf"))
    engine.hold = True
    port = _free_port()
    ui = webui.start_docker(port=port, image="hiyouga/llamafactory:latest")
    assert ui.url == f"http://127.0.0.1:{port}/" and ui.alive()
    [body] = engine.bodies("POST", "/containers/create")
    assert body["Image"] == "hiyouga/llamafactory:latest"
    assert body["Cmd"] == ["llamafactory-cli", "webui"]
    host = body["HostConfig"]
    assert host["IpcMode"] == "host"
    assert host["PortBindings"] == {"7860/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    data_dir = lfwrap_home / "webui" / "docker-data"
    assert _binds(host) == sorted([
        f"{data_dir}:/app/data:ro",
        f"{home.bundled_datasets_dir().resolve()}:/app/data/bundled:ro",
        f"{lfwrap_home / 'saves'}:/app/saves:rw",
        f"{lfwrap_home / 'hf'}:/root/.cache/huggingface:rw",
    ])
    assert host["DeviceRequests"][0]["Count"] == -1
    exported = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert exported["identity"]["file_name"] == "bundled/identity.json"
    ui.stop()
    assert not engine.containers  # stopped and removed
    assert ("POST", f"/containers/{'1':0>64}/stop") in engine.calls()


def test_docker_backend_without_gpu_runtime_fails_clearly(engine: EngineStandIn, lfwrap_home: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(lfwrap_home / "hf"))
    engine.hold, engine.gpu_runtime = True, False
    with pytest.raises(LaunchError, match="could not start the web UI container"):
        webui.start_docker(port=_free_port())


def test_port_in_use_is_a_usage_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is not available"):
            webui.check_port_free("127.0.0.1", port)


def test_cli_help_ends_with_examples(lfwrap) -> None:
    proc = lfwrap("webui", "--help", check=True)
    assert "--backend [local|docker]" in proc.stdout
    examples = [line.strip() for line in proc.stdout.split("Examples:")[1].splitlines() if line.strip()]
    assert examples[0] == "$ lfwrap webui                                  # http://127.0.0.1:7860/"
    assert all(line.startswith("$ lfwrap webui") for line in examples[:4])


def test_cli_errors_are_one_sentence(lfwrap) -> None:
    proc = lfwrap("webui", "--image", "x:1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "Error: --image only applies to --backend docker; add --backend docker or drop --image."
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = lfwrap("webui", "--port", str(port))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"port {port} on 127.0.0.1 is not available" in proc.stderr and "--port" in proc.stderr
