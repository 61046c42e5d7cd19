"""Helpers for the gateway tests: real servers on 127.0.0.1 in threads (the `standin` fixture is in conftest).

A Gateway app is served by the gateway's own server (granian, what `lfwrap gateway` runs); any other
app (the stand-in upstream) by uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from wrapper.gateway.app import Gateway
from wrapper.gateway.keys import KeyCache, KeyStore
from wrapper.gateway.server import GatewayServer
from wrapper.gateway.settings import GatewaySettings, ModelRoute


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """A real server on 127.0.0.1 in a background thread: GatewayServer for a Gateway, else uvicorn."""

    def __init__(self, app: Any, port: int | None = None, graceful_s: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Any
        if isinstance(app, Gateway):
            update: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
            if graceful_s is not None:
                update["shutdown_timeout"] = graceful_s
            app.settings = app.settings.model_copy(update=update)
            self.server = GatewayServer(app)
        else:
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=graceful_s,
            )
            self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def _started(self) -> bool:
        if isinstance(self.server, GatewayServer):
            return self.server.started.is_set()
        return bool(self.server.started)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self._started():
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if isinstance(self.server, GatewayServer):
            self.server.stop()
        else:
            self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def serving(app: Any, **kwargs: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def make_settings(routes: list[dict[str, Any]], tmp: Path, **extra: Any) -> GatewaySettings:
    return GatewaySettings(models=[ModelRoute(**r) for r in routes], keys_db=tmp / "keys.db", **extra)


def make_gateway(settings: GatewaySettings) -> Gateway:
    keys = KeyCache(KeyStore(settings.keys_path()), refresh_s=0.0) if settings.auth == "keys" else None
    return Gateway(settings, keys)


def new_key(settings: GatewaySettings, **kwargs: Any) -> str:
    store = KeyStore(settings.keys_path())
    try:
        return store.create(**kwargs)[1]
    finally:
        store.close()


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    """Poll `condition()` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.01)
    return True


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc), for the memory-bound tests."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
