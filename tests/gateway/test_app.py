"""The gateway in a real uvicorn server, in front of a real stand-in upstream; assertions on what the
upstream received and on what the caller got back."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import httpx
import pytest
from gateway_standin import REPLY, StandIn
from gateway_support import free_port, make_gateway, make_settings, new_key, serving, wait_until

CHAT = {"model": "conch", "messages": [{"role": "user", "content": "请问你是谁"}]}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


@pytest.fixture
def gw(standin, tmp_path: Path):
    app, url = standin
    settings = make_settings(
        [{"name": "conch", "upstream": url, "upstream_key": "up-secret-8c1f0e"}], tmp_path
    )
    key = new_key(settings)
    gateway = make_gateway(settings)
    with serving(gateway) as server:
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        yield {
            "client": client,
            "standin": app,
            "key": key,
            "settings": settings,
            "gateway": gateway,
            "url": server.url,
        }
        client.close()


def test_plain_chat_is_routed_renamed_and_carries_request_id(gw):
    resp = gw["client"].post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-42"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["model"] == "conch"  # the stand-in says gpt-3.5-turbo, the caller asked for conch
    assert answer["choices"][0]["message"]["content"] == REPLY
    assert resp.headers["x-request-id"] == "req-42"
    [seen] = gw["standin"].seen
    assert seen.path == "/v1/chat/completions"
    assert json.loads(seen.body) == CHAT
    assert seen.headers["x-request-id"] == "req-42"
    assert seen.headers["authorization"] == "Bearer up-secret-8c1f0e"  # the upstream's key, not the caller's


def test_request_id_is_generated_when_absent_and_sent_upstream(gw):
    resp = gw["client"].post("/v1/chat/completions", json=CHAT)
    generated = resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert gw["standin"].seen[0].headers["x-request-id"] == generated


def test_streaming_forwards_every_event_with_the_requested_model(gw):
    body = {**CHAT, "stream": True}
    with gw["client"].stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-accel-buffering"] == "no"
        text = resp.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["model"] == "conch" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == REPLY
    assert len(chunks) == len(gw["standin"]._pieces) + 2  # role chunk + pieces + stop chunk, none merged away
    assert "\r" not in text


def test_include_usage_without_tokenizer_counts_chunks(gw):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    text = gw["client"].post("/v1/chat/completions", json=body).text
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    pieces = len(gw["standin"]._pieces)
    assert usage_chunk["usage"]["completion_tokens"] == pieces
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + pieces
    assert all(json.loads(e)["usage"] is None for e in events[:-2])


def _word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([REPLY, "请问你是谁", "hello world"] * 20, trainer)
    tokenizer.save(str(path))
    return path


@pytest.mark.local
def test_include_usage_counts_with_the_models_tokenizer(standin, tmp_path):
    from tokenizers import Tokenizer

    app, url = standin
    tok = _word_tokenizer(tmp_path / "tokenizer.json")
    settings = make_settings(
        [{"name": "conch", "upstream": url, "tokenizer": tmp_path}], tmp_path, auth="open"
    )
    with serving(make_gateway(settings)) as server:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        text = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).text
    usage = json.loads(sse_events(text)[-2])["usage"]
    reference = Tokenizer.from_file(str(tok))
    assert usage["completion_tokens"] == len(reference.encode(REPLY, add_special_tokens=False).ids)
    assert usage["prompt_tokens"] == len(reference.encode("请问你是谁", add_special_tokens=False).ids)
    assert usage["completion_tokens"] != len(app._pieces)  # really the tokenizer, not the chunk count


@pytest.mark.parametrize(
    ("body", "needle", "param"),
    [
        ({"model": "conch", "messages": []}, "non-empty list", "messages"),
        (
            {"model": "conch", "messages": [{"role": "assistant", "content": "hi"}]},
            "'user' was expected",
            "messages",
        ),
        (
            {
                "model": "conch",
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            },
            "end with a user",
            "messages",
        ),
        (
            {
                "model": "conch",
                "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            },
            "'assistant' was expected",
            "messages",
        ),
        ({**CHAT, "n": 2}, "n=2 is not supported", "n"),
        (
            {**CHAT, "stream": True, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "stream",
        ),
        (
            {
                "model": "conch",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}
                ],
            },
            "data: URL",
            "messages",
        ),
        ({"messages": CHAT["messages"]}, "'model' is required", "model"),
    ],
)
def test_requests_llamafactory_would_reject_get_400_before_the_upstream(gw, body, needle, param):
    resp = gw["client"].post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert needle in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert gw["standin"].seen == []


def test_malformed_json_is_400_not_422(gw):
    resp = gw["client"].post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_json"


def test_keys_unknown_model_and_permissions(gw):
    url = gw["url"]
    missing = httpx.post(url + "/v1/chat/completions", json=CHAT)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(
        url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-lfw-nope"}
    )
    assert wrong.status_code == 401 and "Invalid API key" in wrong.json()["error"]["message"]
    unknown = gw["client"].post("/v1/chat/completions", json={**CHAT, "model": "conh"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "Did you mean 'conch'" in unknown.json()["error"]["message"]
    other = new_key(gw["settings"], models=["other"])
    forbidden = httpx.post(
        url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {other}"}
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "model_not_allowed"
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {other}"}).json()["data"] == []
    assert [m["id"] for m in gw["client"].get("/v1/models").json()["data"]] == ["conch"]
    assert httpx.get(url + "/v1/models").status_code == 401
    assert gw["standin"].seen == []


def test_no_keys_yet_says_how_to_create_one(standin, tmp_path):
    _, url = standin
    settings = make_settings([{"name": "conch", "upstream": url}], tmp_path)
    with serving(make_gateway(settings)) as server:
        resp = httpx.post(
            server.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer x"}
        )
    assert resp.status_code == 401
    assert "lfwrap keys create" in resp.json()["error"]["message"]


def test_revoked_key_is_refused_by_the_running_gateway(gw, lfwrap):
    assert gw["client"].post("/v1/chat/completions", json=CHAT).status_code == 200
    key_id = gw["key"].removeprefix("sk-lfw-")[:8]
    from wrapper.gateway.keys import KeyStore

    KeyStore(gw["settings"].keys_path()).revoke(key_id)  # another connection, like `lfwrap keys revoke`
    resp = gw["client"].post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 401


def test_rate_limit_per_key_answers_429_with_retry_after(gw):
    key = new_key(gw["settings"], rpm=2)
    headers = {"Authorization": f"Bearer {key}"}
    codes = [
        gw["client"].post("/v1/chat/completions", json=CHAT, headers=headers).status_code for _ in range(2)
    ]
    limited = gw["client"].post("/v1/chat/completions", json=CHAT, headers=headers)
    assert codes == [200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert len(gw["standin"].seen) == 2
    assert gw["client"].post("/v1/chat/completions", json=CHAT).status_code == 200  # other keys unaffected


def test_body_too_large_is_413(standin, tmp_path):
    _, url = standin
    settings = make_settings([{"name": "conch", "upstream": url}], tmp_path, auth="open", max_body_bytes=2048)
    with serving(make_gateway(settings)) as server:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        resp = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("detail_400", 400, "upstream_rejected"),
        ("error_500", 502, "bad_upstream_response"),
        ("garbage", 502, "bad_upstream_response"),
    ],
)
def test_upstream_errors_become_openai_errors(gw, mode, status, code):
    resp = gw["client"].post("/v1/chat/completions", json={**CHAT, "standin": {"mode": mode}})
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    if mode == "detail_400":
        assert "Invalid role" in resp.json()["error"]["message"]


def test_upstream_key_refused_is_502_naming_upstream_key(tmp_path):
    app = StandIn(api_key="right-key-71a9")
    with serving(app) as up:
        settings = make_settings(
            [{"name": "conch", "upstream": up.url, "upstream_key": "wrong-key-0b2c"}], tmp_path, auth="open"
        )
        with serving(make_gateway(settings)) as server:
            resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    assert "upstream_key" in resp.json()["error"]["message"]


def test_upstream_down_is_503_with_retry_after_and_readyz_says_so(tmp_path):
    settings = make_settings(
        [{"name": "conch", "upstream": f"http://127.0.0.1:{free_port()}"}], tmp_path, auth="open"
    )
    with serving(make_gateway(settings)) as server:
        resp = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
        ready = httpx.get(server.url + "/readyz")
        health = httpx.get(server.url + "/healthz")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    assert resp.headers["retry-after"] == "5"
    assert ready.status_code == 503 and ready.json()["upstreams"]["conch"] != "ok"
    assert health.status_code == 200


def test_readyz_is_200_when_every_upstream_answers(gw):
    ready = httpx.get(gw["url"] + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "upstreams": {"conch": "ok"}}


def test_upstream_timeout_is_504(standin, tmp_path):
    _, url = standin
    settings = make_settings([{"name": "conch", "upstream": url, "read_timeout": 0.3}], tmp_path, auth="open")
    with serving(make_gateway(settings)) as server:
        resp = httpx.post(
            server.url + "/v1/chat/completions", json={**CHAT, "standin": {"mode": "slow_plain"}}
        )
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_failure_mid_stream_ends_with_an_error_event(gw):
    body = {**CHAT, "stream": True, "standin": {"mode": "fail_mid_stream"}}
    resp = gw["client"].post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    assert len(events) >= 2
    last = json.loads(events[-1])
    assert last["error"]["code"] == "upstream_stream_error"
    assert all("error" not in json.loads(e) for e in events[:-1])


def test_caller_disconnect_closes_the_upstream_request(tmp_path):
    app = StandIn(chunks=40, interval_s=0.2)  # an 8 s stream
    with serving(app) as up:
        settings = make_settings([{"name": "conch", "upstream": up.url}], tmp_path, auth="open")
        gateway = make_gateway(settings)
        with serving(gateway) as server:
            with httpx.stream(
                "POST", server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
            ) as resp:
                lines = resp.iter_lines()
                got = [line for line, _ in zip(lines, range(3), strict=False)]
                assert any(line.startswith("data: ") for line in got)
            # the caller is gone: the upstream must see its request closed well before the 4 s stream ends
            assert wait_until(lambda: app.disconnects == 1, timeout=5)
            assert app.streams_finished == 0
            assert gateway.upstreams["conch"].limiter.in_flight == 0
            metrics = httpx.get(server.url + "/metrics").text
    assert 'lfwrap_gateway_requests_total{model="conch",status="499"} 1' in metrics


def test_concurrency_limit_queues_fifo_then_answers_429(tmp_path):
    app = StandIn(chunks=4, interval_s=0.25)
    with serving(app) as up:
        route = {"name": "conch", "upstream": up.url, "max_concurrency": 1, "max_queue": 1}
        settings = make_settings([route], tmp_path, auth="open")
        gateway = make_gateway(settings)
        with serving(gateway) as server:
            results: dict[str, int] = {}

            def call(tag: str) -> None:
                r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
                results[tag] = r.status_code

            first = threading.Thread(target=call, args=("first",))
            first.start()
            assert wait_until(lambda: gateway.upstreams["conch"].limiter.in_flight == 1)
            second = threading.Thread(target=call, args=("second",))
            second.start()
            assert wait_until(lambda: gateway.upstreams["conch"].limiter.queued == 1)
            gauges = httpx.get(server.url + "/metrics").text
            third = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
            first.join()
            second.join()
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "queue_full"
    assert third.headers["retry-after"] == "1"
    assert results == {"first": 200, "second": 200}
    assert 'lfwrap_gateway_in_flight{model="conch"} 1' in gauges
    assert 'lfwrap_gateway_queue_depth{model="conch"} 1' in gauges
    assert app.streams_finished == 2


def test_two_models_are_routed_by_name(tmp_path):
    one, two = StandIn(name="server-one", reply="one"), StandIn(name="server-two", reply="two")
    with serving(one) as a, serving(two) as b:
        settings = make_settings(
            [{"name": "conch", "upstream": a.url}, {"name": "krabs", "upstream": b.url}],
            tmp_path,
            auth="open",
        )
        with serving(make_gateway(settings)) as server:
            r1 = httpx.post(server.url + "/v1/chat/completions", json=CHAT).json()
            r2 = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "krabs"}).json()
    assert (r1["model"], r1["choices"][0]["message"]["content"]) == ("conch", "one")
    assert (r2["model"], r2["choices"][0]["message"]["content"]) == ("krabs", "two")
    assert len(one.seen) == 1 and len(two.seen) == 1


def test_score_evaluation_passes_through(gw):
    body = {"model": "conch", "messages": ["a reply to score"]}
    resp = gw["client"].post("/v1/score/evaluation", json=body)
    assert resp.status_code == 200
    assert resp.json()["model"] == "conch"
    assert gw["standin"].seen[0].path == "/v1/score/evaluation"
    assert json.loads(gw["standin"].seen[0].body) == body


def test_metrics_and_unknown_paths(gw):
    gw["client"].post("/v1/chat/completions", json=CHAT)
    gw["client"].post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    text = httpx.get(gw["url"] + "/metrics").text
    assert 'lfwrap_gateway_requests_total{model="conch",status="200"} 1' in text
    assert 'lfwrap_gateway_requests_total{model="-",status="404"} 1' in text  # callers cannot mint labels
    assert "nope" not in text
    assert 'lfwrap_gateway_request_seconds_count{model="conch"} 1' in text
    assert "# TYPE lfwrap_gateway_request_seconds histogram" in text
    missing = httpx.get(gw["url"] + "/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(gw["url"] + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_access_log_has_ids_and_never_a_key(gw, caplog):
    caplog.set_level(logging.DEBUG)
    gw["client"].post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-7"})
    gw["client"].post("/v1/chat/completions", json={**CHAT, "stream": True})
    httpx.post(
        gw["url"] + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-lfw-leak-me-x9"}
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "lfwrap.gateway.access"]
    assert len(lines) == 3
    key_id = gw["key"].removeprefix("sk-lfw-")[:8]
    assert f"request_id=trace-7 key_id={key_id} POST /v1/chat/completions model=conch status=200" in lines[0]
    assert re.search(r"latency_ms=\d+\.\d+ bytes_in=\d+ bytes_out=[1-9]\d*", lines[1])
    assert "status=401" in lines[2] and "key_id=-" in lines[2]
    httpx.post(
        gw["url"] + "/v1/chat/completions",
        json={**CHAT, "model": "x status=200\nforged line"},
        headers={"Authorization": f"Bearer {gw['key']}"},
    )
    forged = [r.getMessage() for r in caplog.records if r.name == "lfwrap.gateway.access"][-1]
    assert "\n" not in forged and 'model="x\\u0020status=200\\nforged\\u0020line" status=404' in forged
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (gw["key"], "sk-lfw-leak-me-x9", "up-secret-8c1f0e", REPLY):
        assert secret not in everything


def test_start_background_serves_on_a_free_port(standin, tmp_path):
    from wrapper.gateway.server import start_background

    _, url = standin
    settings = make_settings([{"name": "conch", "upstream": url}], tmp_path, port=0)
    key = new_key(settings)
    with start_background(settings) as running:
        assert running.base_url.startswith("http://127.0.0.1:") and not running.base_url.endswith(":0/v1")
        resp = httpx.post(
            running.base_url + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.json()["choices"][0]["message"]["content"] == REPLY
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url + "/healthz", timeout=2)


def test_an_unexpected_failure_is_an_openai_500_with_the_request_id(gw, caplog):
    def broken(key_id: str, rpm: int) -> float:
        raise ZeroDivisionError("a bug")

    gw["gateway"].rate.hit = broken
    key = new_key(gw["settings"], rpm=5)
    resp = httpx.post(
        gw["url"] + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}", "x-request-id": "bug-1"},
    )
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error" and "bug-1" in resp.json()["error"]["message"]
    assert any("bug-1" in r.getMessage() and r.exc_info for r in caplog.records)
