"""Run the gateway on uvicorn: graceful shutdown lets in-flight streams finish up to shutdown_timeout."""

from __future__ import annotations

import logging

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
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
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
