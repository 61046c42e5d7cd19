"""Serving a run or a model with LLaMA-Factory's API server (`llamafactory-cli api`).

    with serve_run("conch", port=8000) as server:     # waits until GET /v1/models answers
        httpx.post(f"{server.url}/v1/chat/completions", ...)
    # leaving the block (or server.stop()) stops the whole process group / container

The infer config is rendered from the `infer` template (base model, the run's adapter, its chat
template) and written next to the log: run_dir/serve.yaml and serve.log for a run, or
$LFWRAP_HOME/serve/<port>.yaml for a bare model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.errors import LaunchError
from wrapper.home import home
from wrapper.launch import runs
from wrapper.launch.configfile import read_host_config, write_yaml
from wrapper.launch.local import llamafactory_cli, spawn
from wrapper.launch.process import stop_group
from wrapper.launch.progress import error_lines

READY_TIMEOUT = 300.0


@dataclass
class ServerHandle:
    """A running API server: its base URL (no /v1), where it logs, and how to stop it."""

    url: str
    log_path: Path
    api_key: str | None = None
    pid: int | None = None  # the local server's process (it leads its own process group)
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    _alive: Callable[[], bool] = field(default=lambda: True, repr=False)
    _stopped: bool = False

    def running(self) -> bool:
        return not self._stopped and self._alive()

    def wait(self) -> None:
        """Block while the server runs (until it exits, or Ctrl-C in the caller)."""
        while self.running():
            time.sleep(0.5)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def infer_config(
    model: str, *, adapter: str | None = None, template: str | None = None, sets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The rendered and validated `infer` config for a model and optional adapter."""
    from wrapper.render import render_template

    extra: dict[str, Any] = {"model_name_or_path": model}
    if adapter:
        extra["adapter_name_or_path"] = adapter
    if template:
        extra["template"] = template
    return render_template("infer", sets, extra=extra).data


def run_infer_config(run_dir: Path, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The infer config for a finished training run: its base model, adapter and chat template."""
    meta = runs.require_succeeded(run_dir, "serve")
    config = read_host_config(run_dir)
    adapter = meta.output_dir if config.get("finetuning_type", "lora") == "lora" else None
    model = meta.output_dir if adapter is None else str(config["model_name_or_path"])
    return infer_config(model, adapter=adapter, template=config.get("template"), sets=sets)


def _wait_ready(
    url: str, api_key: str | None, alive: Callable[[], bool], log_path: Path, timeout: float
) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
            reason = "; ".join(error_lines(text)) or "no output"
            raise LaunchError(f"The API server exited before answering ({reason}); full log: {log_path}.")
        try:
            if httpx.get(f"{url}/v1/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise LaunchError(f"The API server did not answer at {url} within {timeout:.0f} s; see {log_path}.")


def start_api_server(
    config: dict[str, Any],
    *,
    config_path: Path,
    port: int = 8000,
    host: str = "127.0.0.1",
    model_name: str | None = None,
    api_key: str | None = None,
    backend: str = "local",
    timeout: float = READY_TIMEOUT,
    on_started: Callable[[ServerHandle], None] | None = None,
) -> ServerHandle:
    """Write `config` to `config_path`, start `llamafactory-cli api` on it, wait until it answers.

    `on_started` sees the handle as soon as the process exists, before the wait: a caller that must
    find its servers again after a crash (the gateway's serving pool) records the pid there."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = config_path.with_suffix(".log")
    env = {
        "API_HOST": host if backend == "local" else "0.0.0.0",
        "API_PORT": str(port),
        "API_VERBOSE": "0",  # LLaMA-Factory's default logs every request body, message content included
    }
    if model_name:
        env["API_MODEL_NAME"] = model_name
    if api_key:
        env["API_KEY"] = api_key
    url = f"http://{host}:{port}"
    stop: Callable[[], None]
    alive: Callable[[], bool]
    pid = None
    if backend == "docker":
        stop, alive = _start_docker(config, config_path, log_path, env, port, host)
    else:
        write_yaml(config_path, config)
        process = spawn(
            [llamafactory_cli(), "api", config_path.name], cwd=config_path.parent, log_path=log_path, env=env
        )
        alive = lambda: process.poll() is None  # noqa: E731
        stop = lambda: stop_group(process)  # noqa: E731
        pid = process.pid
    server = ServerHandle(url=url, log_path=log_path, api_key=api_key, pid=pid, _stop=stop, _alive=alive)
    try:
        if on_started is not None:
            on_started(server)
        _wait_ready(url, api_key, alive, log_path, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _start_docker(
    config: dict[str, Any], config_path: Path, log_path: Path, env: dict[str, str], port: int, host: str
) -> tuple[Callable[[], None], Callable[[], bool]]:
    """Start `llamafactory-cli api` in a container publishing `port` on `host`; (stop, alive)."""
    import threading

    from wrapper.launch.docker_backend import DockerOptions, default_hf_cache, start_container
    from wrapper.launch.docker_paths import in_container

    folder = config_path.parent
    options = DockerOptions(
        ports={int(env["API_PORT"]): port}, bind_address=host, hf_cache=default_hf_cache()
    )
    inside, mounts = in_container(config, folder, options)
    write_yaml(config_path, inside)
    handle = start_container(
        run_dir=folder,
        command=["llamafactory-cli", "api", config_path.name],
        options=options,
        env=env,
        mounts=mounts,
    )
    log = log_path.open("ab")

    def sink(chunk: bytes) -> None:
        log.write(chunk)
        log.flush()

    reader = threading.Thread(target=handle.stream_logs, args=(sink,), daemon=True)
    reader.start()

    def alive() -> bool:
        if handle.running():
            return True
        reader.join(timeout=10)  # its last lines reach the log before anyone quotes them
        return False

    def stop() -> None:
        handle.stop()
        handle.remove()
        log.close()

    return stop, alive


def board_infer_config(name: str, sets: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The infer config for a finished LLaMA Board run, and where to write it (its lfwrap side folder)."""
    from wrapper.launch import board

    run = board.find_board_run(name)
    board.require_trained(run, "served")
    config = board.board_config(run)
    if config.get("finetuning_type", "lora") in ("lora", "oft"):
        adapters = ",".join(board.tuned_adapters(config, str(run.folder)))
        model, adapter = str(config["model_name_or_path"]), adapters
    else:  # full or freeze: the run folder is a whole model
        model, adapter = str(run.folder), None
    infer = infer_config(model, adapter=adapter, template=config.get("template"), sets=sets)
    return infer, board.side_dir(run) / "serve.yaml"


def serve_run(name: str, *, sets: tuple[str, ...] = (), **kwargs: Any) -> ServerHandle:
    """Serve a finished training run's adapter (a LLaMA Board run by its <model>/<type>/<run> name too);
    see start_api_server for the keyword arguments."""
    from wrapper.launch.board import is_board_name

    if is_board_name(name):
        config, path = board_infer_config(name, sets)
        return start_api_server(config, config_path=path, **kwargs)
    run_dir = runs.find_run(name)
    return start_api_server(run_infer_config(run_dir, sets), config_path=run_dir / "serve.yaml", **kwargs)


def serve_model(
    model: str, *, template: str | None = None, sets: tuple[str, ...] = (), **kwargs: Any
) -> ServerHandle:
    """Serve a model folder or hub id (e.g. an exported run) without an adapter."""
    port = kwargs.get("port", 8000)
    config = infer_config(model, template=template, sets=sets)
    return start_api_server(config, config_path=home() / "serve" / f"serve-{port}.yaml", **kwargs)
