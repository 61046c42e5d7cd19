"""End to end: the real LLaMA-Factory API server (tiny model + identity adapter) behind a real uvicorn
gateway, driven by the official `openai` client. A second model, "krabs", is routed to the fast
stand-in (saving a second LLaMA-Factory process on a 2-core machine); the stand-in also shows that a
caller's disconnect closes the upstream request. A third, "menu", is the same LLaMA-Factory server
behind a `rag:` route on the bundled Krusty Krab documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION
from gateway_standin import StandIn
from gateway_support import ServerThread, free_port, make_gateway, make_settings, new_key, wait_until

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "lf-upstream-5d0c9e7a"
QUESTION = [{"role": "user", "content": IDENTITY_QUESTION}]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, identity_adapter: Path
) -> Iterator[dict[str, Any]]:
    from wrapper.home import bundled_rag_docs_dir
    from wrapper.launch.serve import infer_config, start_api_server
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.store import LocalTarget

    work = tmp_path_factory.mktemp("gateway_e2e")
    index = work / "krusty-docs"  # a route may name an index folder
    index_paths(LocalTarget(index), "krusty-docs", [bundled_rag_docs_dir()])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LFWRAP_HOME", str(work / "home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        config = infer_config(str(tiny_model), adapter=str(identity_adapter), template="default")
        config["do_sample"] = False
        lf = start_api_server(
            config,
            config_path=work / "serve.yaml",
            port=free_port(),
            model_name="tiny-llama",
            api_key=UPSTREAM_KEY,
            timeout=300,
        )
    krabs = StandIn(name="stand-in", reply="I am the stand-in.", chunks=30, interval_s=0.2)
    krabs_server = ServerThread(krabs).start()
    try:
        settings = make_settings(
            [
                {"name": "conch", "upstream": lf.url, "upstream_key": UPSTREAM_KEY, "tokenizer": tiny_model},
                {"name": "krabs", "upstream": krabs_server.url},
                {  # a short context: the tiny model has 512 positions
                    "name": "menu",
                    "upstream": lf.url,
                    "upstream_key": UPSTREAM_KEY,
                    "rag": {"index": str(index), "top_k": 1, "max_context_tokens": 120},
                },
                {"name": "gone", "upstream": f"http://127.0.0.1:{free_port()}"},
            ],
            work,
        )
        key = new_key(settings)
        limited = new_key(settings, rpm=1)
        gateway = ServerThread(make_gateway(settings)).start()
        try:
            yield {
                "url": gateway.url + "/v1",
                "key": key,
                "limited": limited,
                "krabs": krabs,
                "lf": lf,
                "tiny_model": tiny_model,
            }
        finally:
            gateway.stop()
    finally:
        krabs_server.stop()
        lf.stop()


def client(stack: dict[str, Any], key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["url"], api_key=key or stack["key"], max_retries=0, timeout=120)


def test_models_list(stack):
    assert sorted(m.id for m in client(stack).models.list()) == ["conch", "gone", "krabs", "menu"]


def test_a_rag_route_answers_with_its_sources_plain_and_streamed(stack):
    question = [{"role": "user", "content": "蟹黄堡多少钱？"}]
    raw = client(stack).chat.completions.with_raw_response.create(
        model="menu", messages=question, max_tokens=8
    )
    answer = raw.parse()
    assert answer.model == "menu" and answer.choices[0].finish_reason in ("stop", "length")
    sources = answer.model_extra["sources"]
    assert [s["source"] for s in sources] == ["菜单.md"]
    assert raw.headers["x-lfwrap-sources"].startswith("%E8%8F%9C%E5%8D%95.md#")
    chunks = list(
        client(stack).chat.completions.create(model="menu", messages=question, max_tokens=8, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason and chunks[-1].model_extra["sources"] == sources
    # without retrieval the same server answers as the fine-tuned identity
    plain = client(stack).chat.completions.create(
        model="menu", messages=QUESTION, extra_headers={"x-lfwrap-rag": "off"}
    )
    assert plain.choices[0].message.content == IDENTITY_ANSWER and "sources" not in plain.model_extra


def test_chat_answers_with_the_trained_identity(stack):
    answer = client(stack).chat.completions.create(model="conch", messages=QUESTION)
    assert answer.choices[0].message.content == IDENTITY_ANSWER
    assert answer.model == "conch"  # the server calls itself tiny-llama


def test_streaming_chat_with_usage_counted_by_the_models_tokenizer(stack):
    from tokenizers import Tokenizer

    stream = client(stack).chat.completions.create(
        model="conch", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == IDENTITY_ANSWER
    assert {c.model for c in chunks} == {"conch"}
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    tokenizer = Tokenizer.from_file(str(stack["tiny_model"] / "tokenizer.json"))
    assert usage.completion_tokens == len(tokenizer.encode(IDENTITY_ANSWER, add_special_tokens=False).ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_wrong_key_unknown_model_and_rate_limit(stack):
    with pytest.raises(openai.AuthenticationError):
        client(stack, "sk-lfw-00000000-not-a-key").chat.completions.create(model="conch", messages=QUESTION)
    with pytest.raises(openai.NotFoundError) as missing:
        client(stack).chat.completions.create(model="conch-v9", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    limited = client(stack, stack["limited"])
    assert limited.chat.completions.create(model="conch", messages=QUESTION).choices[0].message.content
    with pytest.raises(openai.RateLimitError) as rate:
        limited.chat.completions.create(model="conch", messages=QUESTION)
    assert int(rate.value.response.headers["retry-after"]) >= 1


def test_llamafactory_rejections_are_openai_400s(stack):
    with pytest.raises(openai.BadRequestError) as bad:
        client(stack).chat.completions.create(
            model="conch", messages=[{"role": "assistant", "content": "hi"}]
        )
    assert "'user' was expected" in bad.value.message


def test_two_models_are_routed_by_name(stack):
    seen_before = len(stack["krabs"].seen)
    answer = client(stack).chat.completions.create(model="krabs", messages=QUESTION)
    assert answer.choices[0].message.content == "I am the stand-in."
    assert answer.model == "krabs"
    assert len(stack["krabs"].seen) == seen_before + 1
    assert client(stack).chat.completions.create(model="conch", messages=QUESTION).choices[
        0
    ].message.content == (IDENTITY_ANSWER)


def test_disconnect_mid_stream_closes_the_upstream_request(stack):
    krabs = stack["krabs"]
    before = krabs.disconnects
    stream = client(stack).chat.completions.create(model="krabs", messages=QUESTION, stream=True)
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()  # the caller goes away with ~5 s of stream left
    assert wait_until(lambda: krabs.disconnects == before + 1, timeout=5)


def test_upstream_down_is_503(stack):
    with pytest.raises(openai.InternalServerError) as down:
        client(stack).chat.completions.create(model="gone", messages=QUESTION)
    assert down.value.status_code == 503
    assert down.value.response.headers["retry-after"] == "5"


def test_the_api_servers_log_holds_no_message_content(stack):
    client(stack).chat.completions.create(model="conch", messages=QUESTION, max_tokens=4)
    log = stack["lf"].log_path.read_text(encoding="utf-8", errors="replace")
    assert "/v1/chat/completions" in log or "Uvicorn running" in log  # it is the server's log
    assert IDENTITY_QUESTION not in log  # API_VERBOSE=0: LLaMA-Factory does not log request bodies
