"""Fault injection through the controllable stand-in upstream, and the security properties: each upstream
fault has one defined outcome; memory stays flat over 1,000 faults; keys are hashed and compared in
constant time; no key, Authorization header or message content reaches a log line; no request makes
the gateway call an address that is not in its settings."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_standin import REPLY, StandIn
from gateway_support import free_port, make_gateway, make_settings, new_key, rss_mb, serving

from wrapper.gateway import accesslog

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


def _events(text: str) -> list[Any]:
    lines = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.fixture
def gw(tmp_path: Path):
    app = StandIn(chunks=6)
    with serving(app) as up:
        routes = [{"name": "conch", "upstream": up.url, "read_timeout": 1.0, "max_concurrency": 4}]
        gateway = make_gateway(make_settings(routes, tmp_path, auth="open"))
        with serving(gateway) as server:
            with httpx.Client(base_url=server.url, timeout=15) as client:
                yield client, gateway, app


# mode -> (stream, status, error code); a streamed failure arrives as an error event after the 200
FAULTS = {
    "error_500": (False, 502, "bad_upstream_response"),
    "garbage": (False, 502, "bad_upstream_response"),
    "truncated_json": (False, 502, "bad_upstream_response"),
    "detail_400": (False, 400, "upstream_rejected"),
    "slow_plain": (False, 504, "upstream_timeout"),  # answers after 2 s; read_timeout is 1 s
    "fail_mid_stream": (True, 200, "upstream_stream_error"),
    "no_done": (True, 200, "upstream_stream_error"),
    "stall_stream": (True, 200, "upstream_stream_error"),  # silent past read_timeout
}


@pytest.mark.parametrize("mode", sorted(FAULTS))
def test_each_upstream_fault_has_its_defined_outcome(gw, mode):
    client, _, _ = gw
    stream, status, code = FAULTS[mode]
    resp = client.post("/v1/chat/completions", json={**CHAT, "stream": stream, "standin": {"mode": mode}})
    assert resp.status_code == status
    if stream:
        events = _events(resp.text)
        assert events[-1] != "[DONE]" and events[-1]["error"]["code"] == code
    else:
        assert resp.json()["error"]["code"] == code
    # and the route still works afterwards
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_refused_upstream_is_503_with_retry_after(tmp_path):
    routes = [{"name": "conch", "upstream": f"http://127.0.0.1:{free_port()}"}]
    with serving(make_gateway(make_settings(routes, tmp_path, auth="open"))) as server:
        resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
    assert resp.json()["error"]["code"] == "upstream_unavailable"


def test_slow_trickle_stream_arrives_whole(tmp_path):
    app = StandIn(chunks=10, interval_s=0.15)  # slower than a burst, within read_timeout
    with serving(app) as up:
        routes = [{"name": "conch", "upstream": up.url, "read_timeout": 1.0}]
        with serving(make_gateway(make_settings(routes, tmp_path, auth="open"))) as server:
            resp = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=15)
    events = _events(resp.text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == REPLY


def test_memory_stays_flat_over_1000_faults(gw):
    client, gateway, _ = gw
    quick = ["error_500", "garbage", "truncated_json", "fail_mid_stream", "no_done", "detail_400"]

    def burst(count: int) -> None:
        for n in range(count):
            mode = quick[n % len(quick)]
            body = {**CHAT, "stream": FAULTS[mode][0], "standin": {"mode": mode}}
            assert client.post("/v1/chat/completions", json=body).status_code == FAULTS[mode][1]

    burst(200)  # warm-up: pools, caches, allocator arenas
    before = rss_mb()
    burst(1000)
    grown = rss_mb() - before
    assert grown < 15, f"{grown:.1f} MB more after 1,000 faults"
    assert sum(gateway.metrics.upstream_errors.values()) >= 1000


# ---- security ---------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_compared_in_constant_time(tmp_path, monkeypatch):
    from wrapper.gateway.keys import KEY_PREFIX, KeyCache, KeyStore

    store = KeyStore(tmp_path / "keys.db")
    _, key = store.create(name="k")
    raw = (tmp_path / "keys.db").read_bytes()
    secret = key.removeprefix(KEY_PREFIX).split("-", 1)[1]  # after the key id (token_urlsafe may hold "-")
    assert len(secret) >= 40 and key.encode() not in raw and secret.encode() not in raw
    [(stored,)] = sqlite3.connect(str(tmp_path / "keys.db")).execute("SELECT hash FROM keys").fetchall()
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("wrapper.gateway.keys.hmac.compare_digest", spy)
    cache = KeyCache(store)
    assert cache.lookup(key) is not None
    assert cache.lookup(key[:-1] + "x") is None
    assert compared and compared[0] == (stored, stored)


def test_no_key_authorization_or_content_in_any_log_line(tmp_path, caplog):
    secret_content = "my private question 7f3a"
    upstream_key = "up-logcheck-9b2e77"
    stream = io.StringIO()
    handler = accesslog.install(stream)
    caplog.set_level(logging.DEBUG)
    try:
        app = StandIn(api_key=upstream_key)
        with serving(app) as up:
            routes = [
                {"name": "conch", "upstream": up.url, "upstream_key": upstream_key},
                {"name": "down", "upstream": f"http://127.0.0.1:{free_port()}"},
            ]
            config = make_settings(routes, tmp_path)
            key = new_key(config)
            with serving(make_gateway(config)) as server:
                auth = {"Authorization": f"Bearer {key}"}
                message = {"model": "conch", "messages": [{"role": "user", "content": secret_content}]}
                with httpx.Client(base_url=server.url, headers=auth, timeout=15) as client:
                    client.post("/v1/chat/completions", json=message)
                    client.post("/v1/chat/completions", json={**message, "stream": True})
                    client.post(
                        "/v1/chat/completions",
                        json={**message, "standin": {"mode": "fail_mid_stream"}, "stream": True},
                    )
                    client.post("/v1/chat/completions", json={**message, "model": "down"})
                    client.post("/v1/chat/completions", json={**message, "model": secret_content})
                    client.post("/v1/chat/completions", content=secret_content.encode())
                    client.post(
                        "/v1/chat/completions", json=message, headers={"Authorization": "Bearer " + key[:-2]}
                    )
                    client.get("/v1/models")
        handler.flush()
    finally:
        logging.getLogger("lfwrap.gateway.access").handlers.clear()
        accesslog._direct = None
    server_side = [r for r in caplog.records if r.name.startswith(("lfwrap", "granian", "wrapper"))]
    lines = stream.getvalue().splitlines() + [r.getMessage() for r in server_side]
    assert any("upstream" in line for line in lines)  # the failures were logged, just not the secrets
    assert len([line for line in lines if "access request_id=" in line]) == 7  # one per POST
    for line in lines:
        for secret in (key, key[:-2], upstream_key, "Bearer", "authorization", secret_content):
            assert secret.lower() not in line.lower(), line


def test_no_request_makes_the_gateway_call_an_unconfigured_address(tmp_path):
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.settimeout(0.2)
    trap_addr = f"127.0.0.1:{trap.getsockname()[1]}"
    calls: list[bytes] = []
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            try:
                conn, _ = trap.accept()
            except TimeoutError:
                continue
            calls.append(conn.recv(1000))
            conn.close()

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    try:
        with serving(StandIn()) as up:
            config = make_settings([{"name": "conch", "upstream": up.url}], tmp_path, auth="open")
            with serving(make_gateway(config)) as server:
                hostile: list[dict[str, Any]] = [
                    {**CHAT, "model": f"http://{trap_addr}"},
                    {**CHAT, "model": f"conch@{trap_addr}"},
                    {**CHAT, "api_base": f"http://{trap_addr}", "base_url": f"http://{trap_addr}"},
                    {
                        "model": "conch",
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {"type": "image_url", "image_url": {"url": f"http://{trap_addr}/x.png"}}
                                ],
                            }
                        ],
                    },
                ]
                for body in hostile:
                    httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
                for headers in (
                    {"host": trap_addr},
                    {"x-forwarded-host": trap_addr},
                    {"forwarded": f"host={trap_addr}"},
                ):
                    httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
                with socket.create_connection(("127.0.0.1", server.port)) as raw:
                    data = json.dumps(CHAT).encode()
                    raw.sendall(
                        f"POST http://{trap_addr}/v1/chat/completions HTTP/1.1\r\nhost: {trap_addr}\r\n"
                        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
                        + data
                    )
                    raw.settimeout(10)
                    assert raw.recv(100).startswith(b"HTTP/1.1 ")
    finally:
        stop.set()
        watcher.join(timeout=5)
        trap.close()
    assert calls == []
