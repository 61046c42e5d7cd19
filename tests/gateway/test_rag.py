"""A model route with `rag:` on a real gateway (granian on 127.0.0.1) in front of the stand-in upstream,
called through the official `openai` client: what the upstream receives, what the caller gets back."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from gateway_standin import StandIn
from gateway_support import make_gateway, make_settings, new_key, serving

from wrapper.errors import IndexBrokenError, IndexMissingError
from wrapper.gateway.grounding import SOURCES_HEADER
from wrapper.gateway.settings import SettingsError, load_settings
from wrapper.home import bundled_rag_docs_dir
from wrapper.rag.grounding import BEGIN, END
from wrapper.rag.indexer import index_paths
from wrapper.rag.route import parse_header_value
from wrapper.rag.store import LocalTarget, rag_dir

RAG = {"index": "krusty-docs", "top_k": 4, "min_score": 0.0, "max_context_tokens": 1500}
PRICE_QUESTION = "How much is a Krabby Patty?"


def build_index(name: str = "krusty-docs") -> Path:
    folder = rag_dir() / name
    index_paths(LocalTarget(folder), name, [bundled_rag_docs_dir()])
    return folder


@pytest.fixture
def rag_gw(tmp_path: Path):
    build_index()
    up = StandIn()
    with serving(up) as upstream:
        routes = [
            {"name": "conch", "upstream": upstream.url, "rag": RAG},
            {"name": "plain", "upstream": upstream.url},
        ]
        settings = make_settings(routes, tmp_path)
        key = new_key(settings)
        gateway = make_gateway(settings)
        with serving(gateway) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
            yield {"client": client, "standin": up, "url": server.url, "key": key, "settings": settings}


def _upstream_messages(standin: StandIn) -> list[dict]:
    body = json.loads(standin.seen[-1].body)
    return body["messages"]


@pytest.mark.rag
def test_chunks_reach_the_upstream_in_one_first_system_message(rag_gw):
    rag_gw["client"].chat.completions.create(
        model="conch",
        messages=[
            {"role": "system", "content": "You are the magic conch."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": PRICE_QUESTION},
        ],
    )
    messages = _upstream_messages(rag_gw["standin"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("You are the magic conch.\n\n")
    assert BEGIN in system and END in system and "[menu.md#" in system and "$2.99" in system
    assert messages[-1]["content"] == PRICE_QUESTION
    # a request without a system message gets one, first
    rag_gw["client"].chat.completions.create(
        model="conch", messages=[{"role": "user", "content": "蟹黄堡多少钱？"}]
    )
    messages = _upstream_messages(rag_gw["standin"])
    assert [m["role"] for m in messages] == ["system", "user"] and "2.99美元" in messages[0]["content"]
    assert "[菜单.md#" in messages[0]["content"]
    # the route without rag: the body goes upstream as sent
    rag_gw["client"].chat.completions.create(
        model="plain", messages=[{"role": "user", "content": PRICE_QUESTION}]
    )
    assert _upstream_messages(rag_gw["standin"]) == [{"role": "user", "content": PRICE_QUESTION}]


@pytest.mark.rag
def test_sources_in_a_plain_answer_field_and_header(rag_gw):
    raw = rag_gw["client"].chat.completions.with_raw_response.create(
        model="conch", messages=[{"role": "user", "content": PRICE_QUESTION}]
    )
    completion = raw.parse()
    sources = completion.model_extra["sources"]
    assert sources and sources[0]["id"].startswith("menu.md#") and sources[0]["source"] == "menu.md"
    assert all(set(s) == {"id", "source", "position", "title", "score"} for s in sources)  # no chunk text
    assert parse_header_value(raw.headers[SOURCES_HEADER.decode()]) == [s["id"] for s in sources]
    sent = _upstream_messages(rag_gw["standin"])[0]["content"]
    assert all(f"[{s['id']}]" in sent for s in sources)  # the ids returned are the ids the model saw
    assert completion.choices[0].message.content and completion.model == "conch"


@pytest.mark.rag
@pytest.mark.parametrize("include_usage", [False, True])
def test_sources_on_the_final_stream_chunk(rag_gw, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = rag_gw["client"].chat.completions.with_raw_response.create(
        model="conch", messages=[{"role": "user", "content": "蟹黄堡多少钱？"}], stream=True, **extra
    )
    header = parse_header_value(raw.headers[SOURCES_HEADER.decode()])
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"
    last = chunks[-1]
    assert [s["id"] for s in last.model_extra["sources"]] == header and header[0].startswith("菜单.md#")
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing and finishing[-1].model_extra["sources"] == last.model_extra["sources"]
    assert all(
        "sources" not in (c.model_extra or {}) for c in chunks if c.choices and not c.choices[0].finish_reason
    )
    assert (last.usage is not None) == include_usage


@pytest.mark.rag
def test_opt_out_by_body_field_or_header(rag_gw):
    client, standin = rag_gw["client"], rag_gw["standin"]
    question = [{"role": "user", "content": PRICE_QUESTION}]
    raw = client.chat.completions.with_raw_response.create(
        model="conch", messages=question, extra_body={"rag": False}
    )
    body = json.loads(standin.seen[-1].body)
    assert "rag" not in body and body["messages"] == question  # the field is removed before forwarding
    assert "sources" not in raw.parse().model_extra and SOURCES_HEADER.decode() not in raw.headers
    raw = client.chat.completions.with_raw_response.create(
        model="conch", messages=question, extra_headers={"x-lfwrap-rag": "off"}
    )
    assert _upstream_messages(standin) == question and "sources" not in raw.parse().model_extra
    client.chat.completions.create(model="conch", messages=question, extra_body={"rag": True})
    body = json.loads(standin.seen[-1].body)
    assert "rag" not in body and body["messages"][0]["role"] == "system"
    with pytest.raises(openai.BadRequestError, match="'rag' must be true or false"):
        client.chat.completions.create(model="conch", messages=question, extra_body={"rag": "no"})
    with pytest.raises(openai.BadRequestError, match="x-lfwrap-rag"):
        client.chat.completions.create(
            model="conch", messages=question, extra_headers={"x-lfwrap-rag": "maybe"}
        )


@pytest.mark.rag
def test_access_log_has_chunk_ids_never_their_text(rag_gw, caplog):
    """Through the handler the server installs (lines built without LogRecords); caplog for the rest."""
    import io

    from wrapper.gateway import accesslog

    stream = io.StringIO()
    handler = accesslog.install(stream)
    caplog.set_level(logging.DEBUG)
    try:
        completion = rag_gw["client"].chat.completions.create(
            model="conch", messages=[{"role": "user", "content": PRICE_QUESTION}]
        )
        rag_gw["client"].chat.completions.create(
            model="conch", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-lfwrap-rag": "off"}
        )
        rag_gw["client"].chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
        handler.flush()
    finally:
        access = logging.getLogger("lfwrap.gateway.access")
        access.handlers.clear()
        access.propagate = True
        accesslog._direct = None
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    ids = ",".join(s["id"] for s in completion.model_extra["sources"])
    assert lines[0].endswith(f" rag={ids}") and "model=conch status=200" in lines[0]
    assert lines[1].endswith(" rag=off") and " rag=" not in lines[2]
    everything = stream.getvalue() + caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for text in ("$2.99", "secret formula", BEGIN, PRICE_QUESTION):
        assert text not in everything


@pytest.mark.rag
def test_retrieval_time_is_a_prometheus_histogram(rag_gw):
    rag_gw["client"].chat.completions.create(
        model="conch", messages=[{"role": "user", "content": PRICE_QUESTION}]
    )
    text = httpx.get(rag_gw["url"] + "/metrics").text
    assert "# TYPE lfwrap_gateway_rag_retrieval_seconds histogram" in text
    assert 'lfwrap_gateway_rag_retrieval_seconds_count{index="krusty-docs"} 1.0' in text
    assert 'lfwrap_gateway_rag_retrieval_seconds_bucket{index="krusty-docs",le="+Inf"} 1.0' in text


@pytest.mark.rag
def test_search_endpoint_is_key_protected_and_ranks_chunks(rag_gw, tmp_path):
    url = rag_gw["url"] + "/v1/rag/krusty-docs/search"
    auth = {"Authorization": f"Bearer {rag_gw['key']}"}
    answer = httpx.post(url, json={"query": "蟹黄堡多少钱", "top_k": 2}, headers=auth)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["rank"] for d in data] == [1, 2] and data[0]["id"].startswith("菜单.md#")
    assert (
        "2.99美元" in data[0]["text"]
        and data[0]["score"] >= data[1]["score"]
        and data[0]["source"] == "菜单.md"
    )
    assert httpx.post(url, json={"query": "Krabby Patty"}).status_code == 401
    missing = httpx.post(rag_gw["url"] + "/v1/rag/krusty-doc/search", json={"query": "x"}, headers=auth)
    assert missing.status_code == 404 and "Did you mean 'krusty-docs'" in missing.json()["error"]["message"]
    bad = httpx.post(url, json={"query": "x", "topk": 3}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    # a key limited to the model without rag does not see the index
    other = new_key(rag_gw["settings"], models=["plain"])
    hidden = httpx.post(url, json={"query": "x"}, headers={"Authorization": f"Bearer {other}"})
    assert hidden.status_code == 404
    spec = httpx.get(rag_gw["url"] + "/openapi.json").json()
    assert "/v1/rag/{index}/search" in spec["paths"]


@pytest.mark.rag
def test_missing_or_broken_index_stops_the_start(tmp_path):
    routes = [{"name": "conch", "upstream": "http://127.0.0.1:9", "rag": RAG}]
    with pytest.raises(
        IndexMissingError, match=r"^Model 'conch' \(rag.index 'krusty-docs'\): No retrieval index"
    ):
        make_gateway(make_settings(routes, tmp_path))
    folder = build_index()
    (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexBrokenError, match=r"manifest.json cannot be read .*; rebuild the index"):
        make_gateway(make_settings(routes, tmp_path))
    shutil.rmtree(folder)


@pytest.mark.rag
def test_cli_refuses_to_start_on_a_missing_index(lfwrap):
    result = lfwrap(
        "gateway", "--upstream", "http://127.0.0.1:9", "--model-name", "conch", "--rag-index", "nope",
        "--open",
    )
    assert result.returncode == 1
    assert "Model 'conch' (rag.index 'nope'): No retrieval index" in result.stderr
    assert "Traceback" not in result.stderr


def test_rag_settings_refuse_unknown_keys_with_did_you_mean(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "models:\n  - name: conch\n    upstream: http://127.0.0.1:8000\n"
        "    rag: {index: krusty-docs, topk: 4}\n",
        encoding="utf-8",
    )
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    assert [p.message for p in info.value.problems] == [
        "models.0.rag.topk: unknown key (did you mean 'top_k'?)"
    ]
    config.write_text(
        "models:\n  - name: conch\n    upstream: http://127.0.0.1:8000\n"
        "    rag: {index: krusty-docs, top_k: 4, min_score: 0.0, max_context_tokens: 1500}\n",
        encoding="utf-8",
    )
    route = load_settings(config).models[0]
    assert route.rag is not None and route.rag.index == "krusty-docs" and route.rag.max_context_tokens == 1500


@pytest.mark.rag
def test_a_large_index_is_searched_in_a_worker_thread(tmp_path, monkeypatch):
    from wrapper.gateway import grounding

    build_index()
    monkeypatch.setattr(grounding, "THREAD_FROM_CHUNKS", 1)  # the bundled index counts as large
    up = StandIn()
    with serving(up) as upstream:
        settings = make_settings([{"name": "conch", "upstream": upstream.url, "rag": RAG}], tmp_path)
        key = new_key(settings)
        gateway = make_gateway(settings)
        assert gateway.rag.threaded == {"krusty-docs"}
        with serving(gateway) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
            answer = client.chat.completions.create(
                model="conch", messages=[{"role": "user", "content": PRICE_QUESTION}]
            )
            assert answer.model_extra["sources"][0]["id"].startswith("menu.md#")
            assert "$2.99" in _upstream_messages(up)[0]["content"]
            found = httpx.post(
                server.url + "/v1/rag/krusty-docs/search",
                json={"query": PRICE_QUESTION},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert found.json()["data"][0]["id"] == answer.model_extra["sources"][0]["id"]
