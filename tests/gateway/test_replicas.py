"""Replicas of one model behind one route: balanced by fewest requests in flight, a replica that stops
answering leaves the rotation without a failed call, and comes back once it lists its models again."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from gateway_standin import StandIn
from gateway_support import make_gateway, make_settings, serving, wait_until

from wrapper.gateway.settings import ModelRoute

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


def _chats(seen: list) -> int:
    return sum(1 for s in seen if s.path == "/v1/chat/completions")


def test_a_route_takes_one_url_or_a_list_of_distinct_ones():
    assert ModelRoute(name="m", upstream="http://a:1/v1/").urls == ["http://a:1"]
    assert ModelRoute(name="m", upstream=["http://a:1", "http://b:2/"]).urls == ["http://a:1", "http://b:2"]
    for bad in ([], ["http://a:1", "http://a:1/"], ["ftp://a"]):
        with pytest.raises(ValueError):
            ModelRoute(name="m", upstream=bad)


def test_requests_spread_over_replicas_and_avoid_the_busy_one(tmp_path: Path):
    a, b = StandIn(chunks=2), StandIn(chunks=2)
    with serving(a) as up_a, serving(b) as up_b:
        routes = [{"name": "conch", "upstream": [up_a.url, up_b.url], "max_concurrency": 2}]
        with serving(make_gateway(make_settings(routes, tmp_path, auth="open"))) as gw:
            with httpx.Client(base_url=gw.url, timeout=15) as client:
                for _ in range(20):
                    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
                assert _chats(a.seen) == 10 and _chats(b.seen) == 10  # idle replicas are taken in turn

                # one slow request holds a replica; the next ones all go to the other one
                slow = threading.Thread(
                    target=client.post,
                    args=("/v1/chat/completions",),
                    kwargs={"json": {**CHAT, "standin": {"mode": "slow_plain"}}},
                )
                slow.start()
                assert wait_until(lambda: _chats(a.seen) + _chats(b.seen) == 21)
                busy, other = (a, b) if _chats(a.seen) == 11 else (b, a)
                for _ in range(4):
                    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
                assert (_chats(busy.seen), _chats(other.seen)) == (11, 14)
                slow.join()


def test_a_stopped_replica_leaves_the_rotation_without_a_failed_call_and_comes_back(tmp_path: Path):
    a, b = StandIn(chunks=2), StandIn(chunks=2)
    up_a = serving(a)
    server_a = up_a.__enter__()
    port_a = server_a.port
    with serving(b) as up_b:
        routes = [
            {
                "name": "conch",
                "upstream": [server_a.url, up_b.url],
                "health_interval": 0.2,
                "max_concurrency": 2,
            }
        ]
        gateway = make_gateway(make_settings(routes, tmp_path, auth="open"))
        upstream = gateway.upstreams["conch"]
        with serving(gateway) as gw, httpx.Client(base_url=gw.url, timeout=15) as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            up_a.__exit__(None, None, None)  # replica A stops: its port refuses connections
            statuses = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(20)]
            assert statuses == [200] * 20  # the call that found A down went on to B
            assert [pool.base_url for pool in upstream.down] == [server_a.url]
            ready = client.get("/readyz")
            assert ready.status_code == 200  # one replica answering is enough to serve the model

            seen_before = _chats(a.seen)
            with serving(a, port=port_a):  # A is back on its port
                assert wait_until(lambda: not upstream.down, timeout=10)
                for _ in range(6):
                    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
                assert _chats(a.seen) > seen_before  # and takes requests again
    metrics = gateway.metrics_text()
    assert 'kind="replica_down"' in metrics


def test_every_replica_down_is_one_503(tmp_path: Path):
    from gateway_support import free_port

    routes = [
        {"name": "conch", "upstream": [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]}
    ]
    with serving(make_gateway(make_settings(routes, tmp_path, auth="open"))) as gw:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "upstream_unavailable"
        assert "127.0.0.1" not in resp.text  # no upstream address reaches the caller
        assert httpx.get(gw.url + "/readyz", timeout=10).status_code == 503
