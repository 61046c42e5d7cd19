"""LLaMA-Factory's web UI (LLaMA Board) started with lfwrap's datasets and saves.

LLaMA Board 0.9.5 finds its files relative to its working directory (llamafactory/webui/common.py):
`data/` (the Train tab lists the datasets of `data/dataset_info.json`), `saves/` (where it trains to and
resumes from), `llamaboard_cache/` and `llamaboard_config/`. So the local backend starts it in a folder
prepared under $LFWRAP_HOME/webui, where `data` is a symlink to the prepared datasets folder and `saves`
a symlink to $LFWRAP_HOME/saves. lfwrap's finished runs are linked into saves/ (launch/board_links.py),
so LLaMA Board lists their adapters as checkpoints; `lfwrap runs` lists the runs LLaMA Board trains there.

A container cannot follow host symlinks or absolute host paths, so the Docker backend (and the compose
file) use a portable data folder instead: `export_data_dir` writes a dataset_info.json whose bundled
entries point into `bundled/` (the bundled datasets folder is mounted there) and copies user datasets
into `user/`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from wrapper import home as lfhome
from wrapper.errors import LaunchError, UsageError

DEFAULT_IMAGE = "hiyouga/llamafactory:latest"
DEFAULT_PORT = 7860
CONTAINER_WORKDIR = "/app"  # WORKDIR of LLaMA-Factory's docker/docker-cuda/Dockerfile
CONTAINER_HF_CACHE = "/root/.cache/huggingface"
CONTAINER_LABEL = "lfwrap.webui"


def saves_dir() -> Path:
    path = lfhome.home() / "saves"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        raise LaunchError(f"{link} is a real folder where lfwrap keeps a symlink; move it away and retry.")
    link.symlink_to(target, target_is_directory=True)


def prepare_workdir() -> Path:
    """The working directory for a local LLaMA Board: data -> datasets, saves -> $LFWRAP_HOME/saves."""
    from wrapper.datasets.registry import prepare_dataset_dir

    workdir = lfhome.home() / "webui"
    workdir.mkdir(parents=True, exist_ok=True)
    _link(workdir / "data", prepare_dataset_dir())
    _link(workdir / "saves", saves_dir())
    return workdir


def show_runs() -> list[str]:
    """Link lfwrap's finished runs into saves/ for LLaMA Board's checkpoint list (launch/board_links.py);
    the reasons a run could not be shown."""
    from wrapper.launch.board_links import sync_links

    saves_dir()
    return sync_links().skipped


def _portable_entry(name: str, entry: dict[str, Any], source_dir: Path, dest: Path) -> dict[str, Any]:
    file_name = entry.get("file_name")
    if not file_name:  # hub or script datasets carry no local file
        return dict(entry)
    path = Path(file_name)
    if not path.is_absolute():
        path = source_dir / path
    path = path.resolve()
    bundled = lfhome.bundled_datasets_dir().resolve()
    if path.is_relative_to(bundled):
        return {**entry, "file_name": f"bundled/{path.relative_to(bundled).as_posix()}"}
    if not path.exists():
        raise LaunchError(f"dataset {name!r} uses {path}, which does not exist; fix or unregister it.")
    copied = dest / "user" / path.name
    copied.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, copied, dirs_exist_ok=True)
    else:
        shutil.copy2(path, copied)
    return {**entry, "file_name": f"user/{path.name}"}


def export_data_dir(dest: Path) -> Path:
    """Write a data folder a container can use at LLaMA-Factory's /app/data.

    Bundled datasets are referenced under `bundled/` (mount the bundled datasets folder there, read-only);
    user datasets are copied into `user/`. Returns the dataset_info.json written.
    """
    from wrapper.datasets.info import read_dataset_info
    from wrapper.datasets.registry import prepare_dataset_dir

    source_dir = prepare_dataset_dir()
    info = read_dataset_info(source_dir / "dataset_info.json")
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "user").is_dir():
        shutil.rmtree(dest / "user")
    portable = {name: _portable_entry(name, entry, source_dir, dest) for name, entry in info.items()}
    (dest / "bundled").mkdir(exist_ok=True)  # mount point of the bundled datasets
    (dest / "bundled" / ".gitkeep").touch()
    out = dest / "dataset_info.json"
    out.write_text(json.dumps(portable, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"port {port} on {host} is not available ({exc.strerror}); pass another one with --port."
            ) from None


def llamafactory_cli() -> str:
    beside = Path(sys.executable).parent / "llamafactory-cli"
    found = str(beside) if beside.exists() else shutil.which("llamafactory-cli")
    if not found:
        raise LaunchError(
            "llamafactory-cli is not installed in this environment; install it with "
            "`pip install 'lfwrap[local]'` or use --backend docker."
        )
    return found


def local_env(host: str, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        GRADIO_SERVER_NAME=host,
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SHARE="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class WebUI:
    """A started web UI: its URL, and how to check on it and stop it."""

    url: str
    backend: str
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    container: Any = None
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if self.container is not None:
            self.container.reload()
            return bool(self.container.attrs.get("State", {}).get("Running"))
        return False

    def stop(self, grace: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process is not None and self.process.poll() is None:
            # The web UI starts trainings as its own children: stop the whole process group.
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.container is not None:
            self.container.stop(timeout=int(grace))
            self.container.remove()


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def start_local(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> WebUI:
    """Start `llamafactory-cli webui` in the prepared working directory (CPU or local GPUs)."""
    check_port_free(host, port)
    cli = llamafactory_cli()
    workdir = prepare_workdir()
    show_runs()
    log = workdir / "webui.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [cli, "webui"],
            cwd=workdir,
            env=local_env(host, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return WebUI(url=_url(host, port), backend="local", log=log, process=process)


def docker_spec(
    *,
    image: str,
    host: str,
    port: int,
    data_dir: Path,
    bundled_dir: Path,
    saves: Path,
    hf_cache: Path,
    gpus: bool = True,
    host_paths: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Keyword arguments for docker's `containers.run` that start LLaMA Board like the compose `webui`.
    `host_paths` are mounted read-only at their own paths: lfwrap's runs (the targets of the links in
    saves/ that put them in LLaMA Board's checkpoint list) and models, so those paths work inside."""
    import docker.types

    spec: dict[str, Any] = {
        "image": image,
        "command": ["llamafactory-cli", "webui"],
        "detach": True,
        "working_dir": CONTAINER_WORKDIR,
        "environment": {
            "GRADIO_SERVER_NAME": "0.0.0.0",
            "GRADIO_SERVER_PORT": str(DEFAULT_PORT),
            "GRADIO_ANALYTICS_ENABLED": "False",
        },
        "ports": {f"{DEFAULT_PORT}/tcp": (host, port)},
        "ipc_mode": "host",
        "volumes": {
            str(data_dir): {"bind": f"{CONTAINER_WORKDIR}/data", "mode": "ro"},
            str(bundled_dir): {"bind": f"{CONTAINER_WORKDIR}/data/bundled", "mode": "ro"},
            str(saves): {"bind": f"{CONTAINER_WORKDIR}/saves", "mode": "rw"},
            str(hf_cache): {"bind": CONTAINER_HF_CACHE, "mode": "rw"},
        },
        "labels": {CONTAINER_LABEL: "1"},
    }
    for path in host_paths:
        spec["volumes"][str(path)] = {"bind": str(path), "mode": "ro"}
    for name in ("HF_ENDPOINT", "HF_TOKEN"):
        if os.environ.get(name):
            spec["environment"][name] = os.environ[name]
    if gpus:
        spec["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return spec


def start_docker(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, image: str = DEFAULT_IMAGE, gpus: bool = True
) -> WebUI:
    """Start LLaMA Board in a container with the portable data folder, saves and the HF cache mounted."""
    import docker.errors

    from wrapper.launch.docker_backend import (
        DockerOptions,
        check_cache,
        connect,
        default_hf_cache,
        ensure_image,
    )

    check_port_free(host, port)
    show_runs()
    data_dir = lfhome.home() / "webui" / "docker-data"
    export_data_dir(data_dir)
    hf_cache = default_hf_cache()
    check_cache(hf_cache)
    hf_cache.mkdir(parents=True, exist_ok=True)
    spec = docker_spec(
        image=image,
        host=host,
        port=port,
        data_dir=data_dir,
        bundled_dir=lfhome.bundled_datasets_dir().resolve(),
        saves=saves_dir(),
        hf_cache=hf_cache,
        gpus=gpus,
        host_paths=tuple(p.resolve() for p in (lfhome.runs_dir(), lfhome.models_dir()) if p.is_dir()),
    )
    options = DockerOptions(image=image)
    client = connect(options)
    ensure_image(client, options)
    try:
        container = client.containers.run(**spec)
    except docker.errors.DockerException as exc:
        raise LaunchError(
            f"Docker could not start the web UI container from {image}: {exc}; "
            "check the engine's message above and the image name."
        ) from None
    return WebUI(url=_url(host, port), backend="docker", container=container)


def wait_ready(ui: WebUI, timeout: float = 180.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll the URL until it answers HTTP 200; fail early if the process or container ends."""
    deadline = time.monotonic() + timeout
    while True:
        if not ui.alive():
            where = f"; see {ui.log}" if ui.log else ""
            raise LaunchError(f"the web UI ({ui.backend}) exited before answering at {ui.url}{where}.")
        try:
            if httpx.get(ui.url, timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            where = f"; see {ui.log}" if ui.log else ""
            raise LaunchError(f"the web UI did not answer at {ui.url} within {timeout:.0f} s{where}.")
        sleep(1.0)
