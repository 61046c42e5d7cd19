"""LLaMA-Factory's web UI (LLaMA Board) started with lfwrap's datasets and saves.

LLaMA Board 0.9.5 finds its files relative to its working directory (llamafactory/webui/common.py):
`data/` (the Train tab lists the datasets of `data/dataset_info.json`), `saves/` (where it trains to and
resumes from), `llamaboard_cache/` and `llamaboard_config/`. So the local backend starts it in a folder
prepared under $LFWRAP_HOME/webui, where `data` is a symlink to the prepared datasets folder and `saves`
a symlink to $LFWRAP_HOME/saves. lfwrap's finished runs are linked into saves/ (launch/board_links.py),
so LLaMA Board lists their adapters as checkpoints; `lfwrap runs` lists the runs LLaMA Board trains there.

Both start through lfwrap's backends (wrapper.launch.local, wrapper.launch.docker_backend), as training
does: one way to find llamafactory-cli, to stop a process group, to check what a container may mount.

A container cannot follow host symlinks or absolute host paths, so the Docker backend (and the compose
file) use a portable data folder instead: `export_data_dir` writes a dataset_info.json whose bundled
entries point into `bundled/` (the bundled datasets folder is mounted there) and copies user datasets
into `user/`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from wrapper import home as lfhome
from wrapper.errors import LaunchError, UsageError
from wrapper.launch.process import stop_group

if TYPE_CHECKING:
    from wrapper.launch.docker_backend import DockerHandle, DockerOptions
    from wrapper.launch.docker_paths import Mount

DEFAULT_IMAGE = "hiyouga/llamafactory:latest"
DEFAULT_PORT = 7860
CONTAINER_WORKDIR = "/app"  # WORKDIR of LLaMA-Factory's docker/docker-cuda/Dockerfile
COMMAND = ["llamafactory-cli", "webui"]
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


def local_env(host: str, port: int) -> dict[str, str]:
    """What the local web UI gets on top of the environment (wrapper.launch.local.child_env)."""
    return {
        "GRADIO_SERVER_NAME": host,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SHARE": "false",
        "HF_HUB_OFFLINE": "1",
    }


@dataclass
class WebUI:
    """A started web UI: its URL, and how to check on it and stop it."""

    url: str
    backend: str
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    container: DockerHandle | None = None
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if self.container is not None:
            return self.container.running()
        return False

    def stop(self, grace: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process is not None:
            # The web UI starts trainings as its own children: stop the whole process group.
            stop_group(self.process, grace=grace)
        if self.container is not None:
            self.container.stop(timeout=grace)
            self.container.remove()


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def start_local(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> WebUI:
    """Start `llamafactory-cli webui` in the prepared working directory (CPU or local GPUs), through the
    local backend: its own process group, output to webui.log."""
    from wrapper.launch.local import llamafactory_cli, spawn

    check_port_free(host, port)
    cli = llamafactory_cli()
    workdir = prepare_workdir()
    show_runs()
    log = workdir / "webui.log"
    log.write_bytes(b"")  # this start's output only
    process = spawn([cli, "webui"], cwd=workdir, log_path=log, env=local_env(host, port))
    return WebUI(url=_url(host, port), backend="local", log=log, process=process)


def docker_setup(
    *,
    image: str,
    host: str,
    port: int,
    data_dir: Path,
    saves: Path,
    hf_cache: Path,
    gpus: bool = True,
    host_paths: tuple[Path, ...] = (),
) -> tuple[DockerOptions, list[Mount], dict[str, str]]:
    """The Docker backend's options, mounts and environment that start LLaMA Board like the compose
    `webui`: the portable data folder at /app/data with the bundled datasets at /app/data/bundled
    (read-only), saves at /app/saves and the Hugging Face cache (read-write). `host_paths` are mounted
    read-only at their own paths: lfwrap's runs (the targets of the links in saves/ that put them in
    LLaMA Board's checkpoint list) and models, so those paths work inside."""
    from wrapper.launch.docker_backend import DockerOptions
    from wrapper.launch.docker_paths import Mount

    options = DockerOptions(
        image=image,
        gpus="all" if gpus else None,
        hf_cache=hf_cache,
        ports={DEFAULT_PORT: port},
        bind_address=host,
    )
    mounts = [
        Mount(data_dir, f"{CONTAINER_WORKDIR}/data", read_only=True),
        Mount(lfhome.bundled_datasets_dir().resolve(), f"{CONTAINER_WORKDIR}/data/bundled", read_only=True),
        Mount(saves, f"{CONTAINER_WORKDIR}/saves", read_only=False),
        *(Mount(path, str(path), read_only=True) for path in host_paths),
    ]
    env = {
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": str(DEFAULT_PORT),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    return options, mounts, env


def _container(options: DockerOptions, mounts: list[Mount], env: dict[str, str]) -> dict[str, Any]:
    """The Docker backend's arguments for the web UI: no run folder; LLaMA-Factory's own working
    directory (its data/ and saves/ are the mounts), a label of its own."""
    labels = {CONTAINER_LABEL: "1"}
    return dict(
        run_dir=None,
        command=COMMAND,
        options=options,
        env=env,
        mounts=mounts,
        workdir=CONTAINER_WORKDIR,
        labels=labels,
    )


def docker_spec(options: DockerOptions, mounts: list[Mount], env: dict[str, str]) -> dict[str, Any]:
    """The exact Engine API body the web UI's container is created with, mount checks passed."""
    from wrapper.launch.docker_backend import container_spec

    return container_spec(**_container(options, mounts, env))


def start_docker(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, image: str = DEFAULT_IMAGE, gpus: bool = True
) -> WebUI:
    """Start LLaMA Board in a container through the Docker backend (its mount checks included), with the
    portable data folder, saves and the Hugging Face cache mounted."""
    from wrapper.launch.docker_backend import default_hf_cache, start_container

    check_port_free(host, port)
    show_runs()
    data_dir = lfhome.home() / "webui" / "docker-data"
    export_data_dir(data_dir)
    options, mounts, env = docker_setup(
        image=image,
        host=host,
        port=port,
        data_dir=data_dir,
        saves=saves_dir(),
        hf_cache=default_hf_cache(),
        gpus=gpus,
        host_paths=tuple(p.resolve() for p in (lfhome.runs_dir(), lfhome.models_dir()) if p.is_dir()),
    )
    try:
        handle = start_container(**_container(options, mounts, env))
    except LaunchError as exc:
        raise LaunchError(f"Docker could not start the web UI container from {image}: {exc}") from None
    return WebUI(url=_url(host, port), backend="docker", container=handle)


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
