"""A stand-in for the Docker Engine API, for tests only: no Docker engine can run on these machines.

It listens on a unix socket, answers the calls the real `docker` SDK makes for lfwrap's Docker
backend (/_ping, /version, image inspect and pull, container create/start/inspect/logs/wait/stop/
delete) with the Engine API's shapes and status codes, and records every request (method, path
without the /v1.xx prefix, query, JSON body) so tests can assert on exactly what the SDK sent.

Knobs for the error paths: `images` (what is "on the machine"), `pull_error` (the engine's answer
to a pull), `gpu_runtime` (False: starting a container with a DeviceRequest fails the way dockerd
does without the NVIDIA runtime), `exit_code` and `log_frames` (what the "container" prints), and
`hold` (keep the container running until it is stopped), `on_wait` (a hook run when the SDK starts
waiting, e.g. to deliver Ctrl-C at that moment) and `on_start` (plays the container's work, e.g. writes
what LLaMA-Factory would write into the mounted run directory).
"""

from __future__ import annotations

import json
import re
import shutil
import socketserver
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

API_VERSION = "1.45"
GPU_ERROR = (
    "failed to create task for container: failed to create shim task: OCI runtime create failed: "
    'could not select device driver "nvidia" with capabilities: [[gpu]]'
)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class Container:
    id: str
    name: str
    config: dict[str, Any]
    running: bool = False
    exit_code: int | None = None
    stopped: threading.Event = field(default_factory=threading.Event)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class EngineStandIn:
    """Minimal Engine API stand-in on a unix socket; use as a context manager."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.requests: list[Recorded] = []
        self.images: set[str] = set()
        self.pull_error: tuple[int, str] | None = None  # (status, message) answered to a pull
        self.gpu_runtime = True
        self.start_error: tuple[int, str] | None = None  # (status, message) answered to a start
        self.exit_code = 0
        self.log_frames: list[tuple[int, bytes]] = []  # (1 stdout | 2 stderr, data)
        self.hold = False
        self.on_wait: Callable[[], None] | None = None  # called once when a wait request arrives
        self.on_start: Callable[[Container], None] | None = None  # plays the container's work
        self.containers: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._server: _UnixHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def __enter__(self) -> EngineStandIn:
        standin = self

        class Handler(_Handler):
            engine = standin

        self._server = _UnixHTTPServer(str(self.socket_path), Handler)
        server = self._server
        threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        for container in self.containers.values():
            container.stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order."""
        return [(r.method, r.path) for r in self.requests]

    def bodies(self, method: str, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == method and r.path == path]


class _Handler(BaseHTTPRequestHandler):
    engine: EngineStandIn
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # unix sockets have no client address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing ---------------------------------------------------------------------------
    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def _send(self, status: int, payload: Any = None, content_type: str = "application/json") -> None:
        data = b"" if payload is None else (
            payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def _send_chunked(self, status: int, chunks: list[bytes]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"message": message})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = re.sub(r"^/v\d+\.\d+", "", parts.path)
        query = parse_qs(parts.query)
        body = self._read_body()
        engine = self.engine
        with engine._lock:
            engine.requests.append(Recorded(method, path, query, body))
        route = getattr(self, "_route_" + method.lower())
        route(path, query, body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # -- routes -----------------------------------------------------------------------------
    def _container(self, ident: str) -> Container | None:
        engine = self.engine
        return engine.containers.get(ident) or next(
            (c for c in engine.containers.values() if c.name == ident), None
        )

    def _route_head(self, path: str, query: dict[str, list[str]], body: Any) -> None:
        self._send(200, b"OK", "text/plain")

    def _route_get(self, path: str, query: dict[str, list[str]], body: Any) -> None:
        engine = self.engine
        if path == "/_ping":
            return self._send(200, b"OK", "text/plain")
        if path == "/version":
            return self._send(200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "26.1.4",
                                    "Os": "linux", "Arch": "amd64"})
        match = re.fullmatch(r"/images/(.+)/json", path)
        if match:
            name = match.group(1)
            if name in engine.images:
                return self._send(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [name]})
            return self._error(404, f"No such image: {name}")
        match = re.fullmatch(r"/containers/([^/]+)/json", path)
        if match:
            container = self._container(match.group(1))
            if container is None:
                return self._error(404, f"No such container: {match.group(1)}")
            state = {"Running": container.running, "ExitCode": container.exit_code or 0}
            return self._send(200, {"Id": container.id, "Name": "/" + container.name,
                                    "Config": {"Tty": False, **container.config}, "State": state})
        match = re.fullmatch(r"/containers/([^/]+)/logs", path)
        if match:
            container = self._container(match.group(1))
            if container is None:
                return self._error(404, f"No such container: {match.group(1)}")
            frames = b"".join(struct.pack(">BxxxL", stream, len(data)) + data
                              for stream, data in engine.log_frames)
            return self._send(200, frames, "application/vnd.docker.multiplexed-stream")
        return self._error(404, f"page not found: GET {path}")

    def _route_post(self, path: str, query: dict[str, list[str]], body: Any) -> None:
        engine = self.engine
        if path == "/images/create":
            image = query["fromImage"][0] + ":" + query.get("tag", ["latest"])[0]
            if engine.pull_error is not None:
                status, message = engine.pull_error
                return self._error(status, message)
            engine.images.add(image)
            events = [{"status": f"Pulling from {query['fromImage'][0]}"}, {"status": f"Downloaded {image}"}]
            return self._send_chunked(200, [json.dumps(e).encode() + b"\r\n" for e in events])
        if path == "/containers/create":
            name = query.get("name", [""])[0]
            if body.get("Image") not in engine.images:
                return self._error(404, f"No such image: {body.get('Image')}")
            if name and self._container(name) is not None:
                return self._error(409, f'Conflict. The container name "/{name}" is already in use')
            ident = f"{len(engine.containers) + 1:064x}"
            engine.containers[ident] = Container(ident, name, body)
            return self._send(201, {"Id": ident, "Warnings": []})
        match = re.fullmatch(r"/containers/([^/]+)/(start|wait|stop|kill)", path)
        if match:
            container = self._container(match.group(1))
            if container is None:
                return self._error(404, f"No such container: {match.group(1)}")
            action = match.group(2)
            if action == "start":
                if container.config.get("HostConfig", {}).get("DeviceRequests") and not engine.gpu_runtime:
                    return self._error(500, GPU_ERROR)
                if engine.start_error is not None:
                    return self._error(*engine.start_error)
                container.running = True
                if engine.on_start is not None:
                    engine.on_start(container)
                if not engine.hold:
                    container.exit_code = engine.exit_code
                    container.running = False
                    container.stopped.set()
                return self._send(204)
            if action == "wait":
                callback, engine.on_wait = engine.on_wait, None
                if callback is not None:
                    callback()
                container.stopped.wait(timeout=60)
                return self._send(200, {"StatusCode": container.exit_code, "Error": None})
            container.exit_code = 143 if action == "stop" else 137
            container.running = False
            container.stopped.set()
            return self._send(204)
        return self._error(404, f"page not found: POST {path}")

    def _route_delete(self, path: str, query: dict[str, list[str]], body: Any) -> None:
        match = re.fullmatch(r"/containers/([^/]+)", path)
        if match:
            container = self._container(match.group(1))
            if container is None:
                return self._error(404, f"No such container: {match.group(1)}")
            if container.running and query.get("force", ["0"])[0] not in ("1", "True", "true"):
                return self._error(409, "You cannot remove a running container. Stop it first.")
            container.stopped.set()
            del self.engine.containers[container.id]
            return self._send(204)
        return self._error(404, f"page not found: DELETE {path}")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineStandIn]:
    """The stand-in on a fresh socket; DOCKER_HOST points at it, no Docker/HF variables leak in."""
    # A short folder: unix socket paths are limited to about 100 characters.
    folder = Path(tempfile.mkdtemp(prefix="engine-", dir="/tmp"))
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with EngineStandIn(folder / "docker.sock") as standin:
        monkeypatch.setenv("DOCKER_HOST", standin.url)
        yield standin
    shutil.rmtree(folder, ignore_errors=True)
