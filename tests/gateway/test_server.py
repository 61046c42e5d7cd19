"""The gateway's HTTP server (granian, wrapper/gateway/server.py) on a real socket on 127.0.0.1, serving
the real Gateway app in front of a real stand-in upstream; hostile clients written byte by byte."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from gateway_standin import REPLY, StandIn
from gateway_support import make_gateway, make_settings, rss_mb, serving, wait_until

from wrapper.gateway.app import Gateway
from wrapper.gateway.server import GatewayServer, serve_in_thread

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


@contextmanager
def gateway_on(upstream: StandIn, tmp_path: Path, **settings: Any) -> Iterator[tuple[GatewayServer, Gateway]]:
    with serving(upstream) as up:
        options = {"max_body_bytes": 4096, "shutdown_timeout": 10.0, **settings}
        gateway = make_gateway(
            make_settings([{"name": "conch", "upstream": up.url}], tmp_path, auth="open", port=0, **options)
        )
        server, thread = serve_in_thread(gateway)
        try:
            yield server, gateway
        finally:
            server.stop()
            thread.join(timeout=30)
            assert not thread.is_alive()


def connect(server: GatewayServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


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


def closed_or_refused(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends before it closes (b"" when it just closes); fails if it stays open."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got


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
        assert wait_until(lambda: 'status="499"' in gateway.metrics_text())


def test_declared_body_over_the_limit_is_413_before_it_is_sent(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path, max_body_bytes=2048) as (server, _), connect(server) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n"
        sock.sendall(f"{head}\r\n".encode())  # no body sent at all
        status, _, body = Reader(sock).response()
        assert status == 413
        error = json.loads(body)["error"]
        assert error["code"] == "request_too_large" and "2048" in error["message"]
    assert app.seen == []


def test_chunked_request_body_over_the_limit_is_413(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path, max_body_bytes=2048) as (server, _), connect(server) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        sock.sendall(head + b"1000\r\n" + b"x" * 4096 + b"\r\n")  # more to come, never sent
        status, _, body = Reader(sock).response()
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert app.seen == []


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


# ---- hostile clients ------------------------------------------------------------------------------


def test_16_mb_header_is_closed_without_reaching_the_app(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path) as (server, gateway), connect(server) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * (16 << 20) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the outcome we want
        got = closed_or_refused(sock, 10)
        assert not got.startswith(b"HTTP/1.1 200"), got[:80]
        assert gateway.metrics.requests == {}


@pytest.mark.parametrize("count", [101, 100_000])
def test_too_many_headers_is_431(tmp_path, count):
    with gateway_on(StandIn(), tmp_path) as (server, gateway), connect(server) as sock:
        headers = b"".join(b"x-h%d: v\r\n" % i for i in range(count))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + headers + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = closed_or_refused(sock, 10)
        assert got == b"" or got.startswith(b"HTTP/1.1 431"), got[:80]


def test_url_over_8_kb_is_414(tmp_path):
    with gateway_on(StandIn(), tmp_path) as (server, _), connect(server) as sock:
        sock.sendall(b"GET /v1/models?" + b"a" * 9000 + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        status, _, body = Reader(sock).response()
        assert status == 414 and json.loads(body)["error"]["code"] == "uri_too_long"


def test_slowloris_headers_are_closed_after_header_timeout(tmp_path):
    with gateway_on(StandIn(), tmp_path, header_timeout=1.0) as (server, _), connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")
        sock.settimeout(0.3)
        started = time.monotonic()
        closed = False
        for n in range(40):  # one header line every 0.3 s, for up to 12 s
            try:
                sock.sendall(b"x-slow-%d: v\r\n" % n)
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed and time.monotonic() - started < 10


def test_idle_keep_alive_connection_is_closed(tmp_path):
    with gateway_on(StandIn(), tmp_path, header_timeout=1.0) as (server, _), connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        status, _, _ = Reader(sock).response()
        assert status == 200
        assert closed_or_refused(sock, 10) == b""


def test_stalled_body_is_408_and_the_upstream_never_sees_it(tmp_path):
    app = StandIn()
    with gateway_on(app, tmp_path, body_timeout=1.0) as (server, gateway), connect(server) as sock:
        sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{"mo')
        status, _, body = Reader(sock).response()
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        assert closed_or_refused(sock, 10) == b""
    assert app.seen == []


def test_stalled_body_on_another_path_does_not_hold_the_connection(tmp_path):
    with gateway_on(StandIn(), tmp_path, header_timeout=1.0) as (server, _), connect(server) as sock:
        sock.sendall(b"POST /v1/models HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nabc")
        status, _, _ = Reader(sock).response()
        assert status in (401, 405)
        assert closed_or_refused(sock, 10) == b""


def test_pipelining_flood_keeps_memory_bounded(tmp_path):
    """20,000 pipelined 4 KB requests, answers never read: either the server stops reading once its
    answers back up, or it reads and answers without holding the requests; memory stays flat."""
    with gateway_on(StandIn(), tmp_path) as (server, _), connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-pad: " + b"a" * 4000 + b"\r\n\r\n"
        before = rss_mb()
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 8
        while sent < 20_000 * len(request) and time.monotonic() < deadline:
            try:
                sent += sock.send(request)
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.5)
        grown = rss_mb() - before
        assert grown < 40, f"{grown:.0f} MB more after {sent / 1e6:.0f} MB of pipelined requests"


def test_connection_cap_holds_extra_connections_until_one_ends(tmp_path):
    with gateway_on(StandIn(), tmp_path, max_connections=4) as (server, _):
        holders = [connect(server) for _ in range(4)]
        for sock in holders:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")  # headers never finished
        extra = connect(server)  # the kernel's backlog takes it; the server does not serve it yet
        extra.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        extra.settimeout(1.0)
        with pytest.raises(TimeoutError):
            extra.recv(100)
        holders.pop().close()
        extra.settimeout(10)
        assert extra.recv(100).startswith(b"HTTP/1.1 200")
        for sock in [*holders, extra]:
            sock.close()


# ---- shutdown -------------------------------------------------------------------------------------


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
            except (ConnectionRefusedError, ConnectionResetError):
                return True
            return False

        assert wait_until(refused)
        assert app.streams_finished == 0
        pieces = []
        while piece := reader.chunk():
            pieces.append(piece)
        assert streamed_text(b"".join(pieces)) == REPLY
    assert app.streams_finished == 1


def test_shutdown_timeout_cuts_a_stream_that_runs_too_long(tmp_path):
    app = StandIn(chunks=40, interval_s=0.3)
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


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_serves_https_and_offers_http2_by_alpn(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    with gateway_on(StandIn(), tmp_path, tls_cert=cert, tls_key=key) as (server, _):
        context = ssl.create_default_context(cafile=str(cert))
        resp = httpx.post(f"https://127.0.0.1:{server.port}/v1/chat/completions", json=CHAT, verify=context)
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == REPLY
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.selected_alpn_protocol() == "h2"
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nothing
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=3)
