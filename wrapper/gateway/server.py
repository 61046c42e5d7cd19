"""Serve the gateway on granian (a Rust HTTP server on hyper), embedded in our own asyncio loop.

Why granian: measured with hostile clients against the same app, it closes oversized headers, answers
431 to too many headers, closes connections whose headers (or next request) come too slowly, applies
back-pressure to pipelined requests and caps connections (its `backpressure` gates accept), where
uvicorn and a home-made httptools server accepted all of it. What it leaves to the app (app.py):
URLs over max_url_bytes (414) and bodies that arrive too slowly (408).

Graceful shutdown (SIGTERM/SIGINT, or stop()): the listener closes at once (new connections are
refused), idle connections close, requests in flight finish; after shutdown_timeout the gateway
cancels what is still running, then the ASGI lifespan shutdown runs and run() returns.

Two gateways on one port: granian binds with SO_REUSEPORT, so a second one would silently share the
port; a plain bind first turns that into a clear error.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from wrapper.errors import GatewayError
from wrapper.gateway import accesslog
from wrapper.gateway.app import Gateway
from wrapper.gateway.keys import KeyCache, KeyStore
from wrapper.gateway.settings import GatewaySettings

log = logging.getLogger("lfwrap.gateway")


def build_gateway(settings: GatewaySettings) -> Gateway:
    keys = KeyCache(KeyStore(settings.keys_path())) if settings.auth == "keys" else None
    return Gateway(settings, keys)


def claim_port(host: str, port: int) -> int:
    """The port to serve on (a free one for 0); GatewayError when something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise GatewayError(
                f"The gateway cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                "or stop what uses it."
            ) from None
        return int(probe.getsockname()[1])


def _granian(gateway: Gateway, port: int) -> Any:
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings, HTTP2Settings
    from granian.server.embed import Server

    s = gateway.settings
    tls = s.tls_cert is not None
    http1 = HTTP1Settings(
        header_read_timeout=int(s.header_timeout * 1000),
        keep_alive=True,
        max_buffer_size=s.max_header_bytes,
        pipeline_flush=False,
    )
    http2 = HTTP2Settings(
        max_headers_size=s.max_header_bytes,
        max_concurrent_streams=100,
        keep_alive_interval=int(s.header_timeout * 1000),
        keep_alive_timeout=int(s.header_timeout),
    )
    return Server(
        gateway,
        address=s.host,
        port=port,
        interface=Interfaces.ASGI,
        # HTTP/2 only where ALPN negotiates it; plain-text connections speak HTTP/1.1
        http=HTTPModes.auto if tls and s.http2 else HTTPModes.http1,
        websockets=False,
        backlog=max(128, min(s.max_connections, 4096)),
        backpressure=s.max_connections,
        http1_settings=http1,
        http2_settings=http2,
        log_enabled=False,
        ssl_cert=s.tls_cert,
        ssl_key=s.tls_key,
        ssl_protocol_min=SSLProtocols.tls12,
    )


class GatewayServer:
    """The gateway on granian: run() in the foreground (signals) or from a thread; stop() from anywhere."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.port = 0
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False

    def stop(self) -> None:
        self._stop_requested = True
        loop, event = self._loop, self._stop
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # the loop already ended

    async def _listening(self, host: str) -> bool:
        """True once the listener accepts (granian binds after the lifespan startup)."""
        if not self.gateway.running:
            return False
        target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        try:
            _, writer = await asyncio.open_connection(target, self.port)
        except OSError:
            return False
        writer.close()
        return True

    def run(self, *, signals: bool = False) -> None:
        try:
            import uvloop  # measurably less CPU per request than asyncio's own loop
        except ImportError:
            asyncio.run(self.serve(signals=signals))
        else:
            uvloop.run(self.serve(signals=signals))

    async def serve(self, *, signals: bool = False) -> None:
        settings = self.gateway.settings
        self.port = claim_port(settings.host, settings.port)
        logging.getLogger("granian").setLevel(logging.ERROR)  # it calls its embedded mode experimental
        loop = self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        server = _granian(self.gateway, self.port)
        serving = asyncio.ensure_future(server.serve())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not serving.done() and not await self._listening(settings.host):
                await asyncio.sleep(0.01)
            if not serving.done():
                self.started.set()
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                server.stop()  # closes the listener; requests in flight go on
                done, _ = await asyncio.wait({serving}, timeout=settings.shutdown_timeout)
                if not done:
                    cut = self.gateway.cancel_in_flight()
                    log.warning(
                        "shutdown: %d request(s) still running after %gs, cut", cut, settings.shutdown_timeout
                    )
                    await serving
            elif serving.exception() is not None:
                raise GatewayError(
                    f"The gateway on {settings.host}:{self.port} stopped: {serving.exception()}."
                )
        finally:
            stopping.cancel()
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)


def _raise_fd_limit(max_connections: int) -> None:
    """Each caller connection may hold an upstream connection too: make room for both, up to the
    hard limit, so the connection cap is reached before the process runs out of file descriptors."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return
        if target < wanted:
            log.warning(
                "open files limited to %d: fewer than max_connections %d needs; lower max_connections or "
                "raise `ulimit -n`",
                target,
                max_connections,
            )


def run(settings: GatewaySettings, *, log_level: str = "info") -> None:
    if settings.access_log:
        accesslog.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("lfwrap").setLevel(log_level.upper())
    _raise_fd_limit(settings.max_connections)
    server = GatewayServer(build_gateway(settings))
    gc.set_threshold(10_000, 10, 10)  # young collections every 10k allocations, not every 700
    server.run(signals=True)


@dataclass
class RunningGateway:
    """A gateway serving from a background thread (the demo and tests); `base_url` ends in /v1."""

    url: str
    gateway: Gateway
    _server: GatewayServer
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


def serve_in_thread(gateway: Gateway, *, timeout: float = 15.0) -> tuple[GatewayServer, threading.Thread]:
    """Serve `gateway` from a daemon thread; returns once it listens (raises GatewayError if it cannot)."""
    server = GatewayServer(gateway)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=serve, name="lfwrap-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    settings = gateway.settings
    while not server.started.wait(0.02):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.stop()
            thread.join(timeout=5)
            if failure and isinstance(failure[0], GatewayError):
                raise failure[0]
            raise GatewayError(
                f"The gateway did not start on {settings.host}:{settings.port}"
                + (f" ({failure[0]})" if failure else "")
                + "; is the port already in use?"
            )
    return server, thread


def start_background(settings: GatewaySettings, *, timeout: float = 15.0) -> RunningGateway:
    """Serve in a daemon thread and return once it listens (port 0 picks a free port)."""
    gateway = build_gateway(settings)
    server, thread = serve_in_thread(gateway, timeout=timeout)
    scheme = "https" if settings.tls_cert is not None else "http"
    return RunningGateway(f"{scheme}://{settings.host}:{server.port}", gateway, server, thread)
