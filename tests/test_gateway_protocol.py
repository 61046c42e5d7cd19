"""The lean HTTP/1.1 server (wrapper/gateway/protocol.py) on a real socket on 127.0.0.1, serving the real
Gateway app in front of a real stand-in upstream; requests written byte by byte, answers parsed by hand."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_gateway_support import make_gateway, make_settings, serving, wait_until

from wrapper.gateway.protocol import LeanServer
from wrapper.gateway.standin import REPLY, StandIn

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


@contextmanager
def lean(app: Any, **kwargs: Any) -> Iterator[LeanServer]:
    options = {"max_body_bytes": 4096, "shutdown_timeout": 10.0, "keepalive_s": 5.0, **kwargs}
    server = LeanServer(app, host="127.0.0.1", port=0, **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.started.wait(10)
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


@contextmanager
def gateway_on(upstream: StandIn, tmp_path: Path, **kwargs: Any) -> Iterator[tuple[LeanServer, Any]]:
    with serving(upstream) as up:
        limit = kwargs.get("max_body_bytes", 4096)
        settings = make_settings(
            [{"name": "conch", "upstream": up.url}], tmp_path, auth="open", max_body_bytes=limit
        )
        gateway = make_gateway(settings)
        with lean(gateway, **kwargs) as server:
            yield server, gateway


def connect(server: LeanServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def post(body: dict[str, Any], *, extra: str = "", request_id: str = "r") -> bytes:
    data = orjson.dumps(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"x-request-id: {request_id}\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


class Reader:
    """Reads HTTP/1.1 responses off a socket: head, then a sized or chunked body."""

    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def head(self) -> tuple[int, dict[str, str]]:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def chunk(self) -> bytes:
        size = int(self.file.readline().strip(), 16)
        data = self.file.read(size)
        assert self.file.read(2) == b"\r\n"
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if "content-length" in headers:
            return status, headers, self.file.read(int(headers["content-length"]))
        assert headers.get("transfer-encoding") == "chunked"
        pieces = []
        while piece := self.chunk():
            pieces.append(piece)
        return status, headers, b"".join(pieces)

    def at_eof(self) -> bool:
        return self.file.read(1) == b""


def streamed_text(body: bytes) -> str:
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])


def test_plain_answer_lifespan_and_keep_alive(tmp_path):
    with gateway_on(StandIn(), tmp_path) as (server, gateway):
        assert gateway.running  # lifespan startup ran before the server listened
        with connect(server) as sock:
            reader = Reader(sock)
            for n in range(3):  # three requests, one connection
                sock.sendall(post(CHAT, request_id=f"req-{n}"))
                status, headers, body = reader.response()
                assert status == 200 and headers["x-request-id"] == f"req-{n}"
                assert json.loads(body)["choices"][0]["message"]["content"] == REPLY
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").json() == {"status": "ok"}
    assert not gateway.running  # lifespan shutdown ran


def test_sse_is_chunked_and_each_event_arrives_before_the_stream_ends(tmp_path):
    app = StandIn(chunks=6, interval_s=0.3)
    with gateway_on(app, tmp_path) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(post({**CHAT, "stream": True}))
        status, headers = reader.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert headers["content-type"].startswith("text/event-stream")
        first = reader.chunk()
        assert first.startswith(b"data: ") and first.endswith(b"\n\n")
        assert app.streams_finished == 0  # it came through while the upstream was still streaming
        pieces = [first]
        while piece := reader.chunk():
            pieces.append(piece)
        assert streamed_text(b"".join(pieces)) == REPLY
        assert app.streams_finished == 1


def test_caller_disconnect_mid_stream_closes_the_upstream_request(tmp_path):
    app = StandIn(chunks=20, interval_s=0.2)
    with gateway_on(app, tmp_path) as (server, gateway):
        sock = connect(server)
        reader = Reader(sock)
        sock.sendall(post({**CHAT, "stream": True}))
        assert reader.head()[0] == 200
        assert reader.chunk().startswith(b"data: ")
        reader.file.close()
        sock.close()
        assert wait_until(lambda: app.disconnects == 1, timeout=3)  # the stream had ~4 s left
        assert app.streams_finished == 0
        assert wait_until(lambda: 'status="499"' in gateway.metrics.render())


def test_idle_keep_alive_connection_is_closed(tmp_path):
    with gateway_on(StandIn(), tmp_path, keepalive_s=0.3) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        status, headers, _ = reader.response()
        assert status == 200 and "connection" not in headers  # kept alive ...
        assert reader.at_eof()  # ... until it sat idle


def test_declared_body_over_the_limit_is_413_before_it_is_sent(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path, max_body_bytes=2048) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        head = "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n"
        sock.sendall(f"{head}expect: 100-continue\r\n\r\n".encode())  # no body sent at all
        status, headers, body = reader.response()
        assert status == 413 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["code"] == "request_too_large" and "2048" in error["message"]
        assert reader.at_eof()
    assert app.seen == []


def test_chunked_request_body_over_the_limit_is_413_and_closes(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path, max_body_bytes=2048) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        sock.sendall(head + b"1000\r\n" + b"x" * 4096 + b"\r\n")  # more to come, never sent
        status, _, body = reader.response()
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        assert reader.at_eof()
    assert app.seen == []


def test_expect_100_continue_then_body(tmp_path):
    with gateway_on(StandIn(), tmp_path) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        request = post(CHAT, extra="expect: 100-continue\r\n")
        head, _, body = request.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert reader.file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.file.readline() == b"\r\n"
        sock.sendall(body)
        status, _, answer = reader.response()
        assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == REPLY


def test_pipelined_requests_are_answered_in_order(tmp_path):
    app = StandIn(chunks=4, interval_s=0.1)
    with gateway_on(app, tmp_path) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        slow_first = post({**CHAT, "stream": True}, request_id="one")
        sock.sendall(slow_first + post(CHAT, request_id="two") + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        status, headers, body = reader.response()
        assert status == 200 and headers["x-request-id"] == "one" and streamed_text(body) == REPLY
        status, headers, body = reader.response()
        assert status == 200 and headers["x-request-id"] == "two"
        assert json.loads(body)["choices"][0]["message"]["content"] == REPLY
        status, _, body = reader.response()
        assert status == 200 and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(
    "garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"GET /healthz HTTP/1.1\r\ncontent-length: x\r\n\r\n"]
)
def test_malformed_request_is_400_and_closes_after_earlier_answers(tmp_path, garbage):
    with gateway_on(StandIn(), tmp_path) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n" + garbage)
        assert reader.response()[0] == 200
        status, headers, body = reader.response()
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "bad_http_request"
        assert reader.at_eof()


def test_malformed_chunked_body_is_400_and_the_app_sees_a_disconnect(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path) as (server, gateway), connect(server) as sock:
        reader = Reader(sock)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        sock.sendall(head + b'5\r\n{"a":\r\nzz\r\n')
        status, headers, body = reader.response()
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "bad_http_request"
        assert reader.at_eof()
        assert wait_until(lambda: 'status="499"' in gateway.metrics.render())
    assert app.seen == []


def test_slow_reader_makes_the_apps_send_wait():
    total = 64 * 1024 * 1024  # far more than the socket buffers hold
    block = b"x" * 65536
    sent = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while sent[0] < total:
            await send({"type": "http.response.body", "body": block, "more_body": True})
            sent[0] += len(block)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with lean(app) as server, connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")

        def stalled() -> bool:
            now = sent[0]
            return now > 0 and not wait_until(lambda: sent[0] != now, timeout=0.3)

        assert wait_until(stalled)
        assert sent[0] < total // 4  # the app waited for the reader instead of filling memory
        status, _, body = Reader(sock).response()
        assert status == 200 and len(body) == total and sent[0] == total


def test_graceful_shutdown_lets_a_stream_finish_and_refuses_new_connections(tmp_path):
    app = StandIn(chunks=10, interval_s=0.3)
    with gateway_on(app, tmp_path) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(post({**CHAT, "stream": True}))
        assert reader.head()[0] == 200
        server.stop()

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: caught while the listener closed
                return True
            return False

        assert wait_until(refused)
        assert app.streams_finished == 0
        pieces = []
        while piece := reader.chunk():
            pieces.append(piece)
        assert streamed_text(b"".join(pieces)) == REPLY
        assert reader.at_eof()
    assert app.streams_finished == 1


def test_shutdown_timeout_cuts_a_stream_that_runs_too_long(tmp_path):
    app = StandIn(chunks=20, interval_s=0.3)
    with gateway_on(app, tmp_path, shutdown_timeout=0.5) as (server, _), connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(post({**CHAT, "stream": True}))
        assert reader.head()[0] == 200
        server.stop()
        assert wait_until(lambda: app.disconnects == 1)
        assert app.streams_finished == 0


def test_start_background_and_port_in_use(tmp_path):
    from wrapper.errors import GatewayError
    from wrapper.gateway.server import start_background

    with serving(StandIn()) as up:
        settings = make_settings([{"name": "conch", "upstream": up.url}], tmp_path, auth="open", port=0)
        with start_background(settings) as running:
            assert httpx.get(running.url + "/healthz").status_code == 200
            taken = settings.model_copy(update={"port": int(running.url.rsplit(":", 1)[1])})
            with pytest.raises(GatewayError, match="cannot listen on 127.0.0.1"):
                start_background(taken, timeout=5)
