"""The upstream client's limits and the hot path's order, against real servers on 127.0.0.1: answers of
any size up to max_response_bytes, callers who leave, model names, rate limits before the body, a
locked key store, request ids, upstream addresses kept from callers, keys for the operator pages."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from gateway_standin import StandIn
from gateway_support import free_port, make_gateway, make_settings, new_key, serving, wait_until

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


def _gateway(url: str, tmp_path: Path, **extra):
    settings = make_settings([{"name": "conch", "upstream": url, "read_timeout": 30}], tmp_path, **extra)
    return settings, make_gateway(settings)


@pytest.mark.parametrize("size", [1 << 20, 5 << 20])
def test_large_plain_answers_pass_whole(tmp_path, size):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path, auth="open")
        with serving(gateway) as server:
            body = {**CHAT, "standin": {"mode": "big_plain", "bytes": size}}
            resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200
    assert len(resp.json()["choices"][0]["message"]["content"]) == size


def test_answer_over_max_response_bytes_is_502_and_frees_the_slot(tmp_path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path, auth="open", max_response_bytes=100_000)
        with serving(gateway) as server:
            body = {**CHAT, "standin": {"mode": "big_plain", "bytes": 200_000}}
            resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
            assert resp.status_code == 502
            error = resp.json()["error"]
            assert error["code"] == "upstream_too_large" and "100000" in error["message"]
            assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200


def test_caller_leaving_a_plain_request_aborts_it_upstream_and_frees_the_only_slot(tmp_path):
    app = StandIn()
    with serving(app) as up:
        _, gateway = _gateway(up.url, tmp_path, auth="open")  # max_concurrency 1
        with serving(gateway) as server:
            _leave_after(server.url, 0.5)
            assert wait_until(lambda: app.disconnects == 1, timeout=3)  # it would hold 10 s otherwise
            resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=5)
            assert resp.status_code == 200
            assert wait_until(lambda: 'status="499"' in gateway.metrics_text())


def _leave_after(url: str, seconds: float) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            url + "/v1/chat/completions", json={**CHAT, "standin": {"mode": "hold_plain"}}, timeout=seconds
        )


def test_long_model_name_is_refused_before_routing(tmp_path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path, auth="open")
        with serving(gateway) as server:
            resp = httpx.post(
                server.url + "/v1/chat/completions", json={**CHAT, "model": "c" * 3_800_000}, timeout=10
            )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "model" and "128" in error["message"] and len(error["message"]) < 300


def test_rate_limit_applies_before_the_body_is_read(tmp_path):
    with serving(StandIn()) as up:
        settings, gateway = _gateway(up.url, tmp_path)
        key = new_key(settings, rpm=1)
        with serving(gateway) as server:
            client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            resp = client.post("/v1/chat/completions", content=b"{not json")
            assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_locked_key_store_stalls_nothing_and_known_keys_keep_working(tmp_path):
    with serving(StandIn()) as up:
        settings, gateway = _gateway(up.url, tmp_path)
        key = new_key(settings)
        with serving(gateway) as server:
            client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            lock = sqlite3.connect(str(settings.keys_path()), isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # what a stuck writer looks like
            try:
                started = time.monotonic()
                assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
                assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
                unknown = client.post(
                    "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-lfw-nope"}
                )
                assert unknown.status_code == 401
                assert time.monotonic() - started < 5  # each read gave up after timeout_s (0.5 s)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert gateway.keys is not None and gateway.keys.failures >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/nope"), ("POST", "/v1/chat/completions"), ("GET", "/healthz")],
)
def test_request_id_is_sanitised_on_every_endpoint(tmp_path, method, path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path)
        with serving(gateway) as server:
            hostile = "a" * 5000 + "<script>"
            resp = httpx.request(method, server.url + path, headers={"x-request-id": hostile}, timeout=10)
            plain = httpx.request(method, server.url + path, headers={"x-request-id": "trace-1"}, timeout=10)
    echoed = resp.headers["x-request-id"]
    assert len(echoed) == 32 and echoed.isalnum() and hostile not in resp.text
    assert plain.headers["x-request-id"] == "trace-1"


def test_upstream_address_never_reaches_the_caller(tmp_path):
    port = free_port()
    settings, gateway = _gateway(f"http://127.0.0.1:{port}", tmp_path, auth="open")
    with serving(gateway) as server:
        down = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert down.status_code == 503
    assert str(port) not in down.text and "127.0.0.1" not in down.text


def test_ops_need_key_guards_metrics_readyz_and_docs_but_not_healthz(tmp_path):
    with serving(StandIn()) as up:
        settings, gateway = _gateway(up.url, tmp_path, ops_need_key=True)
        key = new_key(settings)
        with serving(gateway) as server:
            for path in ("/metrics", "/readyz", "/docs", "/openapi.json"):
                assert httpx.get(server.url + path).status_code == 401, path
                ok = httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"})
                assert ok.status_code == 200, path
            assert httpx.get(server.url + "/healthz").status_code == 200


def test_ops_pages_are_open_by_default(tmp_path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path)
        with serving(gateway) as server:
            assert httpx.get(server.url + "/metrics").status_code == 200


def test_oversized_request_line_on_a_proxied_path_is_refused_before_the_app(tmp_path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(up.url, tmp_path, auth="open")
        with serving(gateway) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions?" + b"q" * 9000 + b" HTTP/1.1\r\nhost: t\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 414")


def test_a_stream_reader_who_stops_reading_is_cut_after_send_timeout_and_frees_the_slot(tmp_path):
    with serving(StandIn()) as up:
        _, gateway = _gateway(
            up.url, tmp_path, auth="open", send_timeout=1.0, max_body_bytes=30_000_000
        )  # max_concurrency 1
        with serving(gateway) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            message = {"role": "user", "content": "x" * 16_000_000}  # echoed back as a 16 MB stream
            body = json.dumps({**CHAT, "messages": [message], "stream": True, "standin": {"mode": "echo"}})
            data = body.encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(data) + data
            )  # and never read the answer
            assert wait_until(lambda: 'status="499"' in gateway.metrics_text(), timeout=30)
            resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert resp.status_code == 200
