"""The Docker backend, driven through the real `docker` SDK against the Engine-API stand-in.

No Docker engine can run on these machines, so tests/engine_standin.py answers the Engine API on
a unix socket and records every request; DOCKER_HOST points the SDK at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import yaml
from engine_standin import GPU_ERROR

from wrapper.errors import LaunchError
from wrapper.launch.docker_backend import (
    DEFAULT_IMAGE,
    DockerOptions,
    container_spec,
    redact_spec,
    start_container,
)
from wrapper.launch.docker_paths import Mount, container_config, effective_mounts, standard_mounts

COMMAND = ["llamafactory-cli", "train", "/app/run/config.yaml"]


@pytest.fixture
def layout(lfwrap_home: Path, tmp_path: Path) -> dict[str, Path]:
    paths = {
        "run_dir": lfwrap_home / "runs" / "sft-1",
        "datasets": lfwrap_home / "datasets",
        "model": lfwrap_home / "models" / "tiny-llama",
        "hf_cache": tmp_path / "hf-home",
    }
    for path in paths.values():
        path.mkdir(parents=True)
    return paths


def _start(layout: dict[str, Path], options: DockerOptions, env: dict[str, str] | None = None):
    return start_container(
        run_dir=layout["run_dir"],
        command=COMMAND,
        options=options,
        env=env or {},
        mounts=standard_mounts(layout["datasets"], layout["model"]),
    )


def test_standin_train_container_spec_logs_and_cleanup(engine, layout, monkeypatch):
    engine.images.add(DEFAULT_IMAGE)
    engine.log_frames = [(1, b"step 1/2 loss 1.5\n"), (2, b"a warning\n"), (1, b"done\n")]
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    options = DockerOptions(hf_cache=layout["hf_cache"])

    handle = _start(layout, options, env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    received: list[bytes] = []
    code = handle.run(received.append)

    assert code == 0
    assert b"".join(received) == b"step 1/2 loss 1.5\na warning\ndone\n"
    [body] = engine.bodies("POST", "/containers/create")
    expected = container_spec(
        run_dir=layout["run_dir"], command=COMMAND, options=options,
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
        mounts=standard_mounts(layout["datasets"], layout["model"]),
    )
    assert body == expected
    assert body["Image"] == "hiyouga/llamafactory:latest"
    assert body["Cmd"] == COMMAND
    assert body["WorkingDir"] == "/app/run"
    assert body["Labels"] == {"lfwrap.run": "sft-1"}
    host = body["HostConfig"]
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["IpcMode"] == "host"
    assert host["Privileged"] is False
    assert host["AutoRemove"] is False
    assert "Binds" not in host and "CapAdd" not in host
    mounts = {m["Target"]: (m["Source"], m["Type"], m["ReadOnly"]) for m in host["Mounts"]}
    assert mounts == {
        "/app/data": (str(layout["datasets"].resolve()), "bind", True),
        "/app/models/tiny-llama": (str(layout["model"].resolve()), "bind", True),
        "/app/run": (str(layout["run_dir"].resolve()), "bind", False),
        "/root/.cache/huggingface": (str(layout["hf_cache"].resolve()), "bind", False),
    }
    assert sorted(body["Env"]) == sorted([
        "HF_HOME=/root/.cache/huggingface",
        "HF_ENDPOINT=https://hf-mirror.example",
        "HF_TOKEN=hf_secret_value",
        "FORCE_TORCHRUN=1",
        "NPROC_PER_NODE=2",
    ])
    create = next(r for r in engine.requests if r.path == "/containers/create")
    assert create.query["name"] == ["lfwrap-sft-1"]

    cid = handle.id
    calls = engine.calls()
    for call in [("GET", "/_ping"), ("GET", f"/images/{DEFAULT_IMAGE}/json"), ("POST", "/containers/create"),
                 ("POST", f"/containers/{cid}/start"), ("GET", f"/containers/{cid}/logs"),
                 ("POST", f"/containers/{cid}/wait"), ("DELETE", f"/containers/{cid}")]:
        assert call in calls
    assert calls.index(("POST", "/containers/create")) < calls.index(("POST", f"/containers/{cid}/start"))
    assert calls.index(("POST", f"/containers/{cid}/wait")) < calls.index(("DELETE", f"/containers/{cid}"))
    assert not any(path == "/images/create" for _, path in calls)  # the image was there: no pull
    assert engine.containers == {}


def test_standin_failed_run_exit_code_and_removal(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    engine.exit_code = 1
    engine.log_frames = [(2, b"ValueError: Cannot find dataset\n")]
    handle = _start(layout, DockerOptions(gpus=None))
    received: list[bytes] = []
    assert handle.run(received.append) == 1
    assert b"Cannot find dataset" in b"".join(received)
    assert ("DELETE", f"/containers/{handle.id}") in engine.calls()
    assert engine.containers == {}


def test_standin_chosen_gpu_ids_and_cpu_only(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    _start(layout, DockerOptions(gpus=["0", "2"])).run(lambda chunk: None)
    (layout["run_dir"].parent / "sft-2").mkdir()
    layout["run_dir"] = layout["run_dir"].parent / "sft-2"
    _start(layout, DockerOptions(gpus=None)).run(lambda chunk: None)

    first, second = engine.bodies("POST", "/containers/create")
    assert first["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": ["0", "2"], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert "DeviceRequests" not in second["HostConfig"]
    assert second["Labels"] == {"lfwrap.run": "sft-2"}


def test_standin_hf_variables_not_passed_when_unset(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    _start(layout, DockerOptions(gpus=None), env={"A": "1"}).run(lambda chunk: None)
    [body] = engine.bodies("POST", "/containers/create")
    assert body["Env"] == ["A=1"]  # no HF_TOKEN/HF_ENDPOINT, no HF_HOME without a cache mount


def test_standin_absent_image_is_pulled(engine, layout):
    handle = _start(layout, DockerOptions(image="hiyouga/llamafactory:0.9.5", gpus=None))
    handle.run(lambda chunk: None)
    [pull] = [r for r in engine.requests if r.path == "/images/create"]
    assert pull.method == "POST"
    assert pull.query["fromImage"] == ["hiyouga/llamafactory"]
    assert pull.query["tag"] == ["0.9.5"]
    [body] = engine.bodies("POST", "/containers/create")
    assert body["Image"] == "hiyouga/llamafactory:0.9.5"


def test_standin_absent_image_and_pull_fails(engine, layout):
    engine.pull_error = (404, "pull access denied for nosuch/image, repository does not exist")
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(image="nosuch/image:v1", gpus=None))
    assert str(info.value) == (
        "Docker image nosuch/image:v1 is absent and pulling it failed (pull access denied for nosuch/image, "
        "repository does not exist); check the name and your network or registry login, or choose another "
        "with --image."
    )
    assert ("POST", "/containers/create") not in engine.calls()


def test_standin_no_pull_allowed(engine, layout):
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(gpus=None, pull=False))
    assert str(info.value) == (
        "Docker image hiyouga/llamafactory:latest is not on this machine; "
        "run `docker pull hiyouga/llamafactory:latest`."
    )
    assert not any(path == "/images/create" for _, path in engine.calls())


def test_standin_no_gpu_runtime(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    engine.gpu_runtime = False
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(gpus="all"))
    assert str(info.value) == (
        f"Docker has no GPU runtime ({GPU_ERROR}); install the NVIDIA Container Toolkit, "
        f"or run on the CPU with --gpus none."
    )
    created = [p for m, p in engine.calls() if m == "DELETE"]
    assert len(created) == 1 and created[0].startswith("/containers/")  # the created container is removed
    assert engine.containers == {}


@pytest.mark.parametrize("message,expected", [
    ("failed to create task for container: nvidia-container-cli: initialization error: nvml error: "
     "driver not loaded: unknown",
     "Docker has no GPU runtime (failed to create task for container: nvidia-container-cli: initialization "
     "error: nvml error: driver not loaded: unknown); install the NVIDIA Container Toolkit, or run on the "
     "CPU with --gpus none."),
    ("error while creating mount source path '/x': mkdir /x: read-only file system",
     "Docker could not start the container: error while creating mount source path '/x': mkdir /x: "
     "read-only file system."),
])
def test_standin_start_errors(engine, layout, message, expected):
    engine.images.add(DEFAULT_IMAGE)
    engine.start_error = (500, message)
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(gpus=None))
    assert str(info.value) == expected
    assert engine.containers == {}  # the created container was removed


def test_standin_engine_unreachable(monkeypatch, layout):
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/lfwrap-no-such-dir/docker.sock")
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(gpus=None))
    assert str(info.value) == (
        "Docker engine not reachable at unix:///tmp/lfwrap-no-such-dir/docker.sock (DOCKER_HOST); start "
        "Docker, or point DOCKER_HOST or `docker context use` at a running engine, or use --backend local."
    )


def _docker_context(config_dir: Path, name: str, host: str) -> None:
    """What `docker context create NAME --docker host=HOST && docker context use NAME` leaves on disk."""
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps(
        {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))
    (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))


def test_standin_current_docker_context_is_followed(engine, layout, monkeypatch, tmp_path):
    _docker_context(tmp_path / "docker-config", "rootless", engine.url)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("DOCKER_HOST")
    engine.images.add(DEFAULT_IMAGE)
    assert _start(layout, DockerOptions(gpus=None)).run(lambda chunk: None) == 0
    assert ("POST", "/containers/create") in engine.calls()

    _docker_context(tmp_path / "other", "gone", "unix:///tmp/lfwrap-no-such-dir/docker.sock")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "other"))
    with pytest.raises(LaunchError) as info:
        _start(layout, DockerOptions(gpus=None))
    assert "at unix:///tmp/lfwrap-no-such-dir/docker.sock (Docker context 'gone');" in str(info.value)


def test_standin_explicit_base_url(engine, layout, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/lfwrap-no-such-dir/docker.sock")
    engine.images.add(DEFAULT_IMAGE)
    handle = _start(layout, DockerOptions(gpus=None, base_url=engine.url))
    assert handle.run(lambda chunk: None) == 0
    assert ("POST", "/containers/create") in engine.calls()


def test_standin_name_conflict(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    engine.hold = True
    first = _start(layout, DockerOptions(gpus=None))
    with pytest.raises(LaunchError, match=r"A container named lfwrap-sft-1 already exists; remove it with "
                                          r"`docker rm -f lfwrap-sft-1` and retry\."):
        _start(layout, DockerOptions(gpus=None))
    first.stop(1)
    first.remove()
    assert engine.containers == {}


def test_standin_stop_and_remove(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    engine.hold = True
    handle = _start(layout, DockerOptions(gpus=None))
    handle.stop(timeout=7)
    assert handle.wait() == 143
    handle.remove()
    handle.remove()  # idempotent: the engine says 404 the second time
    [stop] = [r for r in engine.requests if r.path == f"/containers/{handle.id}/stop"]
    assert stop.query["t"] == ["7"]
    deletes = [r for r in engine.requests if r.method == "DELETE"]
    assert len(deletes) == 2 and deletes[0].query["force"] == ["True"]
    assert engine.containers == {}


def test_standin_ctrl_c_stops_and_removes(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    engine.hold = True
    # Deliver Ctrl-C while the SDK is blocked in the wait call, as a user pressing it would.
    main = threading.main_thread().ident
    assert main is not None
    engine.on_wait = lambda: signal.pthread_kill(main, signal.SIGINT)
    handle = _start(layout, DockerOptions(gpus=None))
    with pytest.raises(KeyboardInterrupt):
        handle.run(lambda chunk: None)
    calls = engine.calls()
    assert ("POST", f"/containers/{handle.id}/stop") in calls
    assert calls.index(("POST", f"/containers/{handle.id}/stop")) < calls.index(
        ("DELETE", f"/containers/{handle.id}"))
    assert engine.containers == {}


def test_refuses_mounts_outside_project_folders(engine, layout):
    for source in (Path("/etc"), layout["run_dir"].parent.parent.parent):
        with pytest.raises(LaunchError, match=r"^Refusing to mount .* into the container: only lfwrap's"):
            start_container(run_dir=layout["run_dir"], command=COMMAND, options=DockerOptions(gpus=None),
                            env={}, mounts=[Mount(source, "/app/extra")])
    sneaky = layout["datasets"] / ".." / ".." / ".."
    with pytest.raises(LaunchError, match=r"^Refusing to mount"):
        container_spec(run_dir=layout["run_dir"], command=COMMAND, options=DockerOptions(gpus=None),
                       env={}, mounts=[Mount(sneaky, "/app/extra")])
    assert engine.requests == []  # refused before talking to the engine


def test_ports_are_published_on_loopback(layout):
    spec = container_spec(run_dir=layout["run_dir"], command=["llamafactory-cli", "api", "infer.yaml"],
                          options=DockerOptions(gpus=None, ports={8000: 8123}), env={"API_PORT": "8000"},
                          mounts=[])
    assert spec["ExposedPorts"] == {"8000/tcp": {}}
    assert spec["HostConfig"]["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8123"}]}


def test_container_config_translates_host_paths(layout):
    options = DockerOptions(gpus=None)
    mounts = effective_mounts(run_dir=layout["run_dir"], options=options,
                              mounts=standard_mounts(layout["datasets"], layout["model"]))
    config = {
        "model_name_or_path": str(layout["model"]),
        "dataset_dir": str(layout["datasets"]),
        "output_dir": str(layout["run_dir"] / "output"),
        "adapter_name_or_path": f"{layout['run_dir']}/a1,{layout['run_dir']}/a2",
        "dataset": "identity",
        "template": "qwen",
    }
    assert container_config(config, mounts) == {
        "model_name_or_path": "/app/models/tiny-llama",
        "dataset_dir": "/app/data",
        "output_dir": "/app/run/output",
        "adapter_name_or_path": "/app/run/a1,/app/run/a2",
        "dataset": "identity",
        "template": "qwen",
    }
    hub = {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert container_config(hub, mounts) == hub
    with pytest.raises(LaunchError, match=r"^/opt/model is not visible inside the container"):
        container_config({"model_name_or_path": "/opt/model"}, mounts)


def test_redacted_spec_hides_the_token(layout, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    spec = container_spec(run_dir=layout["run_dir"], command=COMMAND, options=DockerOptions(gpus=None),
                          env={}, mounts=[])
    assert "HF_TOKEN=hf_secret_value" in spec["Env"]
    shown = redact_spec(spec)
    assert shown["Env"] == ["HF_TOKEN=***"]
    assert "hf_secret_value" not in repr(shown)


def _play_llamafactory(container) -> None:
    """What LLaMA-Factory would leave in the mounted run directory after two steps."""
    [run_mount] = [m for m in container.config["HostConfig"]["Mounts"] if m["Target"] == "/app/run"]
    output = Path(run_mount["Source"]) / "output"
    output.mkdir()
    lines = [{"current_steps": step, "total_steps": 2, "loss": 2.0 - step / 2, "percentage": step * 50.0,
              "elapsed_time": "0:00:01", "remaining_time": "0:00:00"} for step in (1, 2)]
    (output / "trainer_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (output / "adapter_model.safetensors").write_bytes(b"stand-in")


def test_standin_lfwrap_train_backend_docker(engine, lfwrap, lfwrap_home, tmp_path):
    """`lfwrap train --backend docker` end to end against the stand-in: spec, config paths, cleanup."""
    engine.images.add(DEFAULT_IMAGE)
    engine.log_frames = [(1, b"[INFO] training in the container\n")]
    engine.on_start = _play_llamafactory
    model = lfwrap_home / "models" / "tiny-llama"
    model.mkdir(parents=True)
    result = lfwrap("train", "--template", "sft_lora", "--model", str(model), "--set", "template=default",
                    "--backend", "docker", "--gpus", "0,1", "--nproc-per-node", "2", "--deepspeed", "z2",
                    "--name", "dock1", env={"DOCKER_HOST": engine.url, "HF_TOKEN": "hf_secret_value"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hf_secret_value" not in result.stdout + result.stderr

    run_dir = lfwrap_home / "runs" / "dock1"
    [body] = engine.bodies("POST", "/containers/create")
    assert body["Image"] == DEFAULT_IMAGE
    assert body["Cmd"][:2] == ["llamafactory-cli", "train"]
    assert body["Labels"] == {"lfwrap.run": "dock1"}
    assert body["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0", "1"]
    assert body["HostConfig"]["IpcMode"] == "host" and body["HostConfig"]["Privileged"] is False
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "2"
    assert env["HF_TOKEN"] == "hf_secret_value"
    assert "CUDA_VISIBLE_DEVICES" not in env  # the DeviceRequest picks the GPUs
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in body["HostConfig"]["Mounts"]}
    assert mounts["/app/run"] == (str(run_dir.resolve()), False)
    assert mounts["/app/models/tiny-llama"] == (str(model.resolve()), True)
    for target, (source, _) in mounts.items():  # nothing but lfwrap's folders and the HF cache
        assert target == "/root/.cache/huggingface" or Path(source).is_relative_to(lfwrap_home.resolve())

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["deepspeed"] == "/app/run/ds_z2.json" and (run_dir / "ds_z2.json").is_file()
    assert config["model_name_or_path"] == "/app/models/tiny-llama"
    assert config["output_dir"].startswith("/app/run/")
    assert "training in the container" in (run_dir / "train.log").read_text(encoding="utf-8")
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["status"] == "succeeded" and meta["exit_code"] == 0
    assert ("DELETE", f"/containers/{meta['container_id']}") in engine.calls()
    assert engine.containers == {}


def test_standin_hf_cache_created_and_mounted(engine, layout, tmp_path):
    engine.images.add(DEFAULT_IMAGE)
    cache = tmp_path / "fresh" / "huggingface"
    spec = container_spec(run_dir=layout["run_dir"], command=COMMAND,
                          options=DockerOptions(gpus=None, hf_cache=cache), env={}, mounts=[])
    assert not cache.exists()  # showing the spec (--dry-run) creates nothing
    assert {"Target": "/root/.cache/huggingface", "Source": str(cache.resolve()), "Type": "bind",
            "ReadOnly": False} in spec["HostConfig"]["Mounts"]
    _start(layout, DockerOptions(gpus=None, hf_cache=cache, network="host")).run(lambda chunk: None)
    assert cache.is_dir()
    [body] = engine.bodies("POST", "/containers/create")
    assert body["HostConfig"]["NetworkMode"] == "host"
    assert "HF_HOME=/root/.cache/huggingface" in body["Env"]


def _train_in_standin(engine, lfwrap, lfwrap_home: Path, name: str, *extra: str,
                      play=_play_llamafactory) -> Path:
    """A finished docker run of the tiny model's folder, as the stand-in plays it; the model folder."""
    engine.images.add(DEFAULT_IMAGE)
    engine.on_start = play
    model = lfwrap_home / "models" / "tiny-llama"
    model.mkdir(parents=True)
    result = lfwrap("train", "--template", "sft_lora", "--model", str(model), "--set", "template=default",
                    "--backend", "docker", "--gpus", "none", *extra, "--name", name,
                    env={"DOCKER_HOST": engine.url})
    assert result.returncode == 0, result.stdout + result.stderr
    return model


def test_standin_as_me_runs_train_and_export_as_the_caller(engine, lfwrap, lfwrap_home):
    def play(container) -> None:  # training, then the merge writing into the mounted run folder
        if container.config["Cmd"][1] == "train":
            return _play_llamafactory(container)
        [run_mount] = [m for m in container.config["HostConfig"]["Mounts"] if m["Target"] == "/app/run"]
        merged = Path(run_mount["Source"]) / "merged"
        merged.mkdir()
        (merged / "model.safetensors").write_bytes(b"stand-in")

    model = _train_in_standin(engine, lfwrap, lfwrap_home, "mine", "--as-me", play=play)
    result = lfwrap("export", "mine", "--backend", "docker", env={"DOCKER_HOST": engine.url})
    assert result.returncode == 0, result.stdout + result.stderr

    # The run's config holds container paths; the export maps them back to the host and in again.
    exported = yaml.safe_load((lfwrap_home / "runs" / "mine" / "export.yaml").read_text(encoding="utf-8"))
    assert exported["model_name_or_path"] == "/app/models/tiny-llama"
    assert exported["adapter_name_or_path"] == "/app/run/output"
    assert exported["export_dir"] == "/app/run/merged"

    # Serving the run (here or in a container) starts from the same host view.
    from wrapper.launch.serve import run_infer_config

    infer = run_infer_config(lfwrap_home / "runs" / "mine")
    assert infer["model_name_or_path"] == str(model.resolve())
    assert infer["adapter_name_or_path"] == str(lfwrap_home / "runs" / "mine" / "output")

    train, export = engine.bodies("POST", "/containers/create")
    assert export["Cmd"][:2] == ["llamafactory-cli", "export"]
    for body in (train, export):  # the merged model is the caller's too
        assert body["User"] == f"{os.getuid()}:{os.getgid()}"
        env = dict(item.split("=", 1) for item in body["Env"])
        assert env["HF_HOME"] == "/app/hf_home" and env["HOME"] == "/tmp"  # /root is closed to this user
        targets = {m["Target"] for m in body["HostConfig"]["Mounts"]}
        assert "/app/hf_home" in targets and not any(t.startswith("/root") for t in targets)

    refused = lfwrap("train", "--template", "sft_lora", "--as-me")
    assert refused.returncode == 2 and "--as-me only applies to --backend docker" in refused.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_standin_serve_backend_docker_publishes_waits_and_stops(engine, lfwrap, lfwrap_home):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from wrapper.launch.serve import serve_run

    _train_in_standin(engine, lfwrap, lfwrap_home, "srv")

    class Models(BaseHTTPRequestHandler):  # what the container's API server answers on the published port
        def do_GET(self) -> None:
            body = b'{"object": "list", "data": [{"id": "conch", "object": "model"}]}'
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    api = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    port = api.server_address[1]
    engine.on_start = lambda container: threading.Thread(target=api.serve_forever, daemon=True).start()
    engine.hold = True
    try:
        server = serve_run("srv", backend="docker", port=port, model_name="conch", timeout=30)
        assert server.url == f"http://127.0.0.1:{port}" and server.running()
        server.stop()
    finally:
        api.shutdown()
        api.server_close()

    body = engine.bodies("POST", "/containers/create")[-1]
    assert body["Cmd"] == ["llamafactory-cli", "api", "serve.yaml"]
    assert body["ExposedPorts"] == {f"{port}/tcp": {}}
    binding = {"HostIp": "127.0.0.1", "HostPort": str(port)}
    assert body["HostConfig"]["PortBindings"] == {f"{port}/tcp": [binding]}
    env = dict(item.split("=", 1) for item in body["Env"])
    assert (env["API_HOST"], env["API_PORT"], env["API_MODEL_NAME"]) == ("0.0.0.0", str(port), "conch")
    served = yaml.safe_load((lfwrap_home / "runs" / "srv" / "serve.yaml").read_text(encoding="utf-8"))
    assert served["model_name_or_path"] == "/app/models/tiny-llama"
    assert served["adapter_name_or_path"] == "/app/run/output"
    assert engine.containers == {}  # stopped and removed


def test_standin_serve_backend_docker_reports_an_early_exit(engine, lfwrap, lfwrap_home):
    from wrapper.launch.serve import serve_run

    _train_in_standin(engine, lfwrap, lfwrap_home, "srv")
    engine.on_start = None
    engine.exit_code = 1
    engine.log_frames = [(2, b"Traceback (most recent call last):\n"), (2, b"ValueError: bad adapter\n")]
    with pytest.raises(LaunchError, match=r"exited before answering \(ValueError: bad adapter\)"):
        serve_run("srv", backend="docker", port=_free_port(), timeout=60)
    assert engine.containers == {}


@pytest.mark.parametrize("cache", ["/", "~", "..", "LFWRAP_HOME", "LFWRAP_HOME/..", "/etc", "/usr/"])
def test_a_cache_that_is_root_home_or_holds_lfwrap_home_is_refused(engine, layout, lfwrap_home: Path,
                                                                   cache: str):
    engine.images.add(DEFAULT_IMAGE)
    path = Path(cache.replace("LFWRAP_HOME", str(lfwrap_home))).expanduser()
    if cache == "..":
        path = Path.home() / ".."  # a folder holding the home folder
    with pytest.raises(LaunchError, match="Refusing to mount the Hugging Face cache"):
        _start(layout, DockerOptions(hf_cache=path))
    assert ("POST", "/containers/create") not in engine.calls()


def test_hf_home_root_is_refused_before_a_run_exists(lfwrap, lfwrap_home: Path):
    for dry in (["--dry-run"], []):
        proc = lfwrap("train", "-t", "sft_lora", "--backend", "docker", "--name", "rooted", *dry,
                      env={"HF_HOME": "/"})
        assert proc.returncode == 1, proc.stderr
        assert "Refusing to mount the Hugging Face cache /" in proc.stderr
        assert not (lfwrap_home / "runs" / "rooted").exists()


def test_shm_size_replaces_the_host_ipc_namespace(engine, layout):
    engine.images.add(DEFAULT_IMAGE)
    _start(layout, DockerOptions(hf_cache=layout["hf_cache"])).run(lambda chunk: None)
    (layout["run_dir"].parent / "sft-2").mkdir()
    layout["run_dir"] = layout["run_dir"].parent / "sft-2"
    _start(layout, DockerOptions(hf_cache=layout["hf_cache"], shm_size="16g")).run(lambda chunk: None)
    default, private = engine.bodies("POST", "/containers/create")
    assert default["HostConfig"]["IpcMode"] == "host" and "ShmSize" not in default["HostConfig"]
    assert private["HostConfig"]["IpcMode"] == "private"
    assert private["HostConfig"]["ShmSize"] == 16 * 1024**3
    with pytest.raises(LaunchError, match="is not a size"):
        _start(layout, DockerOptions(shm_size="lots"))


def test_train_shm_size_reaches_the_dry_run_spec(lfwrap):
    proc = lfwrap("train", "-t", "sft_lora", "--backend", "docker", "--shm-size", "2g", "--dry-run",
                  check=True)
    spec = json.loads(proc.stdout.split("# container spec (Engine API POST /containers/create)")[1])
    assert spec["HostConfig"]["IpcMode"] == "private" and spec["HostConfig"]["ShmSize"] == 2 * 1024**3
    proc = lfwrap("train", "-t", "sft_lora", "--shm-size", "2g", "--dry-run")
    assert proc.returncode == 2 and "--shm-size only applies to --backend docker" in proc.stderr
