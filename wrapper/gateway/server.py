"""Run the gateway on uvicorn: graceful shutdown lets in-flight streams finish up to shutdown_timeout."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from wrapper.errors import GatewayError
from wrapper.gateway import accesslog
from wrapper.gateway.app import Gateway
from wrapper.gateway.keys import KeyCache, KeyStore
from wrapper.gateway.settings import GatewaySettings


def build_gateway(settings: GatewaySettings) -> Gateway:
    keys = KeyCache(KeyStore(settings.keys_path())) if settings.auth == "keys" else None
    return Gateway(settings, keys)


def uvicorn_config(gateway: Gateway, *, log_level: str = "info") -> object:
    import uvicorn

    settings = gateway.settings
    return uvicorn.Config(
        gateway,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        proxy_headers=False,
        server_header=False,
        loop="auto",
        http="auto",
    )


def run(settings: GatewaySettings, *, log_level: str = "info") -> None:
    import uvicorn

    if settings.access_log:
        accesslog.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    gateway = build_gateway(settings)
    config = uvicorn_config(gateway, log_level=log_level)
    assert isinstance(config, uvicorn.Config)
    uvicorn.Server(config).run()


@dataclass
class RunningGateway:
    """A gateway serving from a background thread (the demo and tests); `base_url` ends in /v1."""

    url: str
    gateway: Gateway
    _server: Any
    _thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=self.gateway.settings.shutdown_timeout + 5)

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(settings: GatewaySettings, *, timeout: float = 15.0) -> RunningGateway:
    """Serve in a daemon thread and return once it listens (port 0 picks a free port)."""
    import uvicorn

    gateway = build_gateway(settings)
    config = uvicorn_config(gateway, log_level="warning")
    assert isinstance(config, uvicorn.Config)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lfwrap-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise GatewayError(
                f"The gateway did not start on {settings.host}:{settings.port}; is the port already in use?"
            )
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(f"http://{settings.host}:{port}", gateway, server, thread)
