"""Run the gateway on the lean HTTP/1.1 server (protocol.py).

Graceful shutdown lets in-flight streams finish up to shutdown_timeout.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass

from wrapper.errors import GatewayError
from wrapper.gateway import accesslog
from wrapper.gateway.app import Gateway
from wrapper.gateway.keys import KeyCache, KeyStore
from wrapper.gateway.protocol import LeanServer
from wrapper.gateway.settings import GatewaySettings


def build_gateway(settings: GatewaySettings) -> Gateway:
    keys = KeyCache(KeyStore(settings.keys_path())) if settings.auth == "keys" else None
    return Gateway(settings, keys)


def lean_server(gateway: Gateway) -> LeanServer:
    settings = gateway.settings
    return LeanServer(
        gateway,
        host=settings.host,
        port=settings.port,
        max_body_bytes=settings.max_body_bytes,
        shutdown_timeout=settings.shutdown_timeout,
    )


def run(settings: GatewaySettings, *, log_level: str = "info") -> None:
    if settings.access_log:
        accesslog.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("lfwrap").setLevel(log_level.upper())
    server = lean_server(build_gateway(settings))
    gc.set_threshold(10_000, 10, 10)  # young collections every 10k allocations, not every 700
    server.run(signals=True)


@dataclass
class RunningGateway:
    """A gateway serving from a background thread (the demo and tests); `base_url` ends in /v1."""

    url: str
    gateway: Gateway
    _server: LeanServer
    _thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=self.gateway.settings.shutdown_timeout + 5)

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(settings: GatewaySettings, *, timeout: float = 15.0) -> RunningGateway:
    """Serve in a daemon thread and return once it listens (port 0 picks a free port)."""
    server = lean_server(build_gateway(settings))
    failure: list[GatewayError] = []

    def serve() -> None:
        try:
            server.run()
        except GatewayError as exc:
            failure.append(exc)

    thread = threading.Thread(target=serve, name="lfwrap-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started.wait(0.02):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.stop()
            thread.join(timeout=5)
            if failure:
                raise failure[0]
            raise GatewayError(
                f"The gateway did not start on {settings.host}:{settings.port}; is the port already in use?"
            )
    return RunningGateway(f"http://{settings.host}:{server.port}", server.app, server, thread)
