"""Run LLaMA-Factory inside the hiyouga/llamafactory container through the Docker SDK.

The launcher decides what to run (command, environment, which folders the container sees); this
module turns that into one create-container request, starts it, streams its logs, waits for it and
removes it afterwards. `container_spec` returns the exact JSON body sent to the Engine API, so
`--dry-run` can show it and tests can compare it with what the engine received.

Safety rules built in: never privileged; only folders under $LFWRAP_HOME (datasets, runs, models),
the bundled datasets and the Hugging Face cache may be mounted; the datasets and models are
mounted read-only, the run directory and the cache read-write; HF_ENDPOINT and HF_TOKEN are
passed through only when they are set on the host.

The `env` given to `container_spec`/`start_container` is what the container gets on top of the
image's own environment: pass only lfwrap's variables (e.g. from `distributed.apply`), never a copy
of the host's os.environ.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from wrapper.errors import LaunchError
from wrapper.home import bundled_datasets_dir, home
from wrapper.launch.docker_paths import CONTAINER_RUN_DIR, Mount, effective_mounts, hf_home_target

if TYPE_CHECKING:
    from docker.client import DockerClient

    from wrapper.launch.runs import RunMeta

DEFAULT_IMAGE = "hiyouga/llamafactory:latest"
RUN_LABEL = "lfwrap.run"
PASSTHROUGH_ENV = ("HF_ENDPOINT", "HF_TOKEN")
SECRET_ENV = ("HF_TOKEN",)
_GPU_DRIVER_HINTS = ("could not select device driver", "nvidia-container-cli", "unresolvable CDI devices")

Gpus = Literal["all"] | list[str] | None


@dataclass
class DockerOptions:
    """How to run the container. `gpus`: "all", a list of device ids (["0", "1"]) or None for CPU."""

    image: str = DEFAULT_IMAGE
    gpus: Gpus = "all"
    hf_cache: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port
    bind_address: str = "127.0.0.1"
    network: str | None = None  # e.g. "host" for multi-node torchrun
    user: str | None = None  # e.g. "1000:1000"; None keeps the image's user (root)
    base_url: str | None = None  # None: DOCKER_HOST, else the default socket
    pull: bool = True  # pull the image when it is absent
    # PyTorch's DataLoader workers hand batches over in shared memory (/dev/shm), and Docker gives a
    # container only 64 MB of it: LLaMA-Factory's own docker instructions use --ipc=host (the host's
    # IPC namespace and /dev/shm), and so does lfwrap by default. shm_size ("16g") gives the container
    # a private IPC namespace with a /dev/shm that large instead, isolated from the host's.
    shm_size: str | None = None


def default_hf_cache() -> Path:
    """The host's Hugging Face home ($HF_HOME, default ~/.cache/huggingface)."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def engine_url(options: DockerOptions) -> tuple[str, str]:
    """Where the client connects and why, in the Docker CLI's order: an explicit base URL,
    DOCKER_HOST, the current Docker context (DOCKER_CONTEXT or `docker context use`), the default socket."""
    if options.base_url:
        return options.base_url, "base URL"
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], "DOCKER_HOST"
    from docker.context.api import ContextAPI
    from docker.context.config import get_current_context_name
    from docker.errors import DockerException

    name = os.environ.get("DOCKER_CONTEXT") or get_current_context_name()
    try:
        host = ContextAPI.kwargs_from_context(name).get("base_url")
    except DockerException:
        host = None
    if host and name != "default":
        return str(host), f"Docker context '{name}'"
    return "unix:///var/run/docker.sock", "the default socket"


def run_label(run_dir: Path) -> str:
    return run_dir.name


def container_name(run_dir: Path) -> str:
    return "lfwrap-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", run_dir.name)


def _allowed_roots(options: DockerOptions, run_dir: Path | None) -> list[Path]:
    roots = [home(), bundled_datasets_dir(), *([run_dir] if run_dir is not None else [])]
    if options.hf_cache is not None:
        roots.append(options.hf_cache)
    return [root.expanduser().resolve() for root in roots]


SYSTEM_FOLDERS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
)


def check_cache(cache: Path) -> None:
    """LaunchError for a Hugging Face cache that must not be mounted read-write into a container: /, a
    system folder, the home folder (or a folder holding it), or one holding $LFWRAP_HOME."""
    resolved = cache.expanduser().resolve()
    user_home = Path.home().resolve()
    lf_home = home()
    why = None
    if resolved == Path("/") or str(resolved) in SYSTEM_FOLDERS and resolved != user_home:
        why = "a system folder"
    elif user_home.is_relative_to(resolved):
        why = "your home folder" if resolved == user_home else f"a folder holding your home {user_home}"
    elif lf_home.is_relative_to(resolved):
        why = f"a folder holding $LFWRAP_HOME ({lf_home}): runs, datasets and keys"
    if why:
        raise LaunchError(
            f"Refusing to mount the Hugging Face cache {cache} read-write into the container: it is {why}; "
            "set HF_HOME to a cache folder of its own, e.g. HF_HOME=~/.cache/huggingface."
        )


def _shm_bytes(size: str) -> int:
    from docker.errors import DockerException
    from docker.utils import parse_bytes

    try:
        value = int(parse_bytes(size))
    except (DockerException, ValueError):
        value = 0
    if value <= 0:
        raise LaunchError(f"--shm-size {size!r} is not a size; write it like 16g or 512m.")
    return value


def _check_mounts(mounts: list[Mount], options: DockerOptions, run_dir: Path | None) -> None:
    if options.hf_cache is not None:
        check_cache(options.hf_cache)
    roots = _allowed_roots(options, run_dir)
    targets: set[str] = set()
    for mount in mounts:
        source = mount.source.expanduser().resolve()
        if not any(source == root or source.is_relative_to(root) for root in roots):
            raise LaunchError(
                f"Refusing to mount {mount.source} into the container: only lfwrap's folders under "
                f"$LFWRAP_HOME ({home()}), the bundled datasets and the Hugging Face cache may be mounted; "
                f"move the files under $LFWRAP_HOME."
            )
        # the cache is made when the container starts, the run folder when the planned run is created
        made_later = mount.target in (hf_home_target(options), CONTAINER_RUN_DIR)
        if not source.exists() and not made_later:
            raise LaunchError(f"Cannot mount {mount.source} into the container: it does not exist.")
        if not mount.target.startswith("/"):
            raise LaunchError(f"Mount target {mount.target!r} must be an absolute path inside the container.")
        if mount.target in targets:
            raise LaunchError(
                f"Two mounts target {mount.target} inside the container; give each its own path."
            )
        targets.add(mount.target)


def _device_requests(gpus: Gpus) -> list[dict[str, Any]]:
    from docker.types import DeviceRequest

    if gpus is None:
        return []
    if gpus == "all":
        return [DeviceRequest(driver="nvidia", count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(driver="nvidia", device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def host_user() -> str:
    """This process's uid:gid, for DockerOptions.user (files the container writes are then yours)."""
    return f"{os.getuid()}:{os.getgid()}"


def _env_list(options: DockerOptions, env: Mapping[str, str]) -> list[str]:
    merged: dict[str, str] = {"HF_HOME": hf_home_target(options)} if options.hf_cache is not None else {}
    if options.user:
        merged["HOME"] = "/tmp"  # torch, triton and pip write caches under $HOME; root's is not ours
    for name in PASSTHROUGH_ENV:
        value = os.environ.get(name)
        if value:
            merged[name] = value
    merged.update(options.env)
    merged.update(env)
    return [f"{key}={value}" for key, value in merged.items()]


def container_spec(
    *,
    run_dir: Path | None,
    command: list[str],
    options: DockerOptions,
    env: Mapping[str, str],
    mounts: list[Mount],
    workdir: str = CONTAINER_RUN_DIR,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The exact body of the Engine API's POST /containers/create for this run.

    The run directory is mounted read-write at /app/run (the working directory); the Hugging Face
    cache, when `options.hf_cache` is set, read-write at /root/.cache/huggingface. A container that is
    no run (the web UI: `run_dir` None) works in `workdir` and carries `labels` instead.
    """
    from docker.types import Mount as DockerMount

    all_mounts = effective_mounts(run_dir=run_dir, options=options, mounts=mounts)
    _check_mounts(all_mounts, options, run_dir)

    host_config: dict[str, Any] = {
        # see DockerOptions.shm_size: the host's IPC namespace for PyTorch's shared-memory data loaders
        "IpcMode": "host" if options.shm_size is None else "private",
        "Privileged": False,
        "AutoRemove": False,
        "Mounts": [
            dict(DockerMount(m.target, str(m.source.resolve()), type="bind", read_only=m.read_only))
            for m in all_mounts
        ],
    }
    if options.shm_size is not None:
        host_config["ShmSize"] = _shm_bytes(options.shm_size)
    device_requests = _device_requests(options.gpus)
    if device_requests:
        host_config["DeviceRequests"] = [dict(request) for request in device_requests]
    if options.network:
        host_config["NetworkMode"] = options.network
    spec: dict[str, Any] = {
        "Image": options.image,
        "Cmd": list(command),
        "Env": _env_list(options, env),
        "Labels": dict(labels) if labels is not None else {RUN_LABEL: run_label(run_dir)} if run_dir else {},
        "WorkingDir": workdir,
        "Tty": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": host_config,
    }
    if options.ports:
        spec["ExposedPorts"] = {f"{port}/tcp": {} for port in options.ports}
        host_config["PortBindings"] = {
            f"{port}/tcp": [{"HostIp": options.bind_address, "HostPort": str(host_port)}]
            for port, host_port in options.ports.items()
        }
    if options.user:
        spec["User"] = options.user
    return spec


def run_spec(run_dir: Path, meta: RunMeta) -> dict[str, Any]:
    """The container spec a docker run (planned or created) is started with, secrets redacted."""
    from wrapper.launch.docker_paths import docker_setup

    options, mounts = docker_setup(meta)
    spec = container_spec(run_dir=run_dir, command=meta.command, options=options, env=meta.env, mounts=mounts)
    return redact_spec(spec)


def redact_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` fit for printing: secret environment values replaced by ***."""
    env = [
        f"{item.split('=', 1)[0]}=***" if item.split("=", 1)[0] in SECRET_ENV else item
        for item in spec.get("Env", [])
    ]
    return {**spec, "Env": env}


def _engine_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()


def connect(options: DockerOptions) -> DockerClient:
    """A client for the engine (DOCKER_HOST or the Docker context); LaunchError if it does not answer."""
    from docker.client import DockerClient
    from docker.errors import DockerException

    try:
        if options.base_url:
            client = DockerClient(base_url=options.base_url, version="auto")
        else:
            client = DockerClient.from_env()
        client.ping()
    except DockerException as exc:
        url, source = engine_url(options)  # where from_env looked, worked out again only for the message
        raise LaunchError(
            f"Docker engine not reachable at {url} ({source}); start Docker, or point DOCKER_HOST or "
            "`docker context use` at a running engine, or use --backend local."
        ) from exc
    return client


def ensure_image(client: DockerClient, options: DockerOptions) -> None:
    """Make sure the image is on the engine, pulling it once when absent and allowed."""
    from docker.errors import APIError, ImageNotFound
    from docker.utils import parse_repository_tag

    try:
        client.api.inspect_image(options.image)
        return
    except ImageNotFound:
        pass
    except APIError as exc:
        raise LaunchError(f"Docker could not inspect image {options.image}: {_engine_message(exc)}.") from exc
    if not options.pull:
        raise LaunchError(
            f"Docker image {options.image} is not on this machine; run `docker pull {options.image}`."
        )
    repository, tag = parse_repository_tag(options.image)
    reason = ""
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                reason = str(event["error"])
        client.api.inspect_image(options.image)
        return
    except APIError as exc:
        reason = reason or _engine_message(exc)
    raise LaunchError(
        f"Docker image {options.image} is absent and pulling it failed ({reason}); check the name and "
        f"your network or registry login, or choose another with --image."
    )


class DockerHandle:
    """A created and started container; remove() it when done (run() does all of it)."""

    def __init__(self, client: DockerClient, container_id: str, name: str):
        self.client = client
        self.id = container_id
        self.name = name

    def wait(self) -> int:
        """Block until the container exits; its exit code."""
        from docker.errors import DockerException

        try:
            result = self.client.api.wait(self.id, timeout=None)
        except DockerException as exc:
            raise LaunchError(
                f"Lost the container {self.name} while waiting for it: {_engine_message(exc)}."
            ) from exc
        return int(result.get("StatusCode", -1))

    def running(self) -> bool:
        """Whether the container is still running (False once it has exited or is gone)."""
        from docker.errors import NotFound

        try:
            state = self.client.api.inspect_container(self.id).get("State") or {}
        except NotFound:
            return False
        return bool(state.get("Running"))

    def stream_logs(self, sink: Callable[[bytes], None]) -> None:
        """Pass stdout and stderr chunks to `sink` until the container ends."""
        from docker.errors import NotFound

        try:
            for chunk in self.client.api.logs(self.id, stdout=True, stderr=True, stream=True, follow=True):
                sink(chunk)
        except NotFound:
            return

    def stop(self, timeout: float = 10) -> None:
        """Stop the container (SIGTERM, then SIGKILL after `timeout` seconds)."""
        from docker.errors import NotFound

        try:
            self.client.api.stop(self.id, timeout=int(timeout))
        except NotFound:
            return

    def remove(self) -> None:
        """Remove the container (idempotent)."""
        from docker.errors import NotFound

        try:
            self.client.api.remove_container(self.id, force=True)
        except NotFound:
            return

    def run(self, sink: Callable[[bytes], None], stop_timeout: float = 10) -> int:
        """Stream logs to `sink`, wait, and always remove the container; Ctrl-C stops it first."""
        reader = threading.Thread(target=self.stream_logs, args=(sink,), daemon=True)
        reader.start()
        try:
            code = self.wait()
            reader.join(timeout=30)
            return code
        except BaseException:
            self.stop(stop_timeout)
            raise
        finally:
            self.remove()


def start_container(
    *,
    run_dir: Path | None,
    command: list[str],
    options: DockerOptions,
    env: dict[str, str],
    mounts: list[Mount],
    workdir: str = CONTAINER_RUN_DIR,
    labels: Mapping[str, str] | None = None,
) -> DockerHandle:
    """Create and start the container for this run (named after it) or, with `run_dir` None, an unnamed
    one working in `workdir`; LaunchError with one sentence on any failure."""
    from docker.errors import APIError

    spec = container_spec(
        run_dir=run_dir,
        command=command,
        options=options,
        env=env,
        mounts=mounts,
        workdir=workdir,
        labels=labels,
    )
    if options.hf_cache is not None:
        options.hf_cache.expanduser().mkdir(parents=True, exist_ok=True)
    client = connect(options)
    ensure_image(client, options)
    name = container_name(run_dir) if run_dir is not None else None
    try:
        created = client.api.create_container_from_config(spec, name=name)
    except APIError as exc:
        if exc.status_code == 409:
            raise LaunchError(
                f"A container named {name} already exists; remove it with `docker rm -f {name}` and retry."
            ) from exc
        raise LaunchError(f"Docker could not create the container: {_engine_message(exc)}.") from exc
    handle = DockerHandle(client, created["Id"], name or created["Id"][:12])
    try:
        client.api.start(handle.id)
    except APIError as exc:
        handle.remove()
        message = _engine_message(exc)
        if any(hint in message for hint in _GPU_DRIVER_HINTS):
            raise LaunchError(
                f"Docker has no GPU runtime ({message}); install the NVIDIA Container Toolkit, "
                f"or run on the CPU with --gpus none."
            ) from exc
        raise LaunchError(f"Docker could not start the container: {message}.") from exc
    return handle
