"""The per-route settings and the one call a server makes per chat request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wrapper.errors import IndexMissingError
from wrapper.home import bundled_rag_docs_dir
from wrapper.rag.indexer import index_paths
from wrapper.rag.route import Grounded, RagRoute, RouteRetriever, parse_header_value
from wrapper.rag.store import LocalTarget, rag_dir


def test_route_settings_refuse_unknown_keys() -> None:
    route = RagRoute.model_validate(
        {"index": "krusty-docs", "top_k": 4, "min_score": 0.0, "max_context_tokens": 1500}
    )
    assert route.postgres is None
    with pytest.raises(ValidationError, match="top_kk"):
        RagRoute.model_validate({"index": "krusty-docs", "top_kk": 4})
    with pytest.raises(ValidationError):
        RagRoute.model_validate({"index": "k", "top_k": 0})


@pytest.mark.rag
def test_missing_index_fails_when_the_route_is_built() -> None:
    with pytest.raises(IndexMissingError, match="krusty-docs"):
        RouteRetriever(RagRoute(index="krusty-docs"))


@pytest.mark.rag
def test_ground_a_chat_request() -> None:
    index_paths(LocalTarget(rag_dir() / "krusty-docs"), "krusty-docs", [bundled_rag_docs_dir()])
    route = RouteRetriever(RagRoute(index="krusty-docs", top_k=2))
    messages = [
        {"role": "system", "content": "你是蟹堡王的神奇海螺。"},
        {"role": "user", "content": "蟹黄堡多少钱？"},
    ]
    grounded = route.ground(messages)
    assert [m["role"] for m in grounded.messages] == ["system", "user"]
    assert grounded.messages[0]["content"].startswith("你是蟹堡王的神奇海螺。\n\n")
    assert "[菜单.md#1]" in grounded.messages[0]["content"] and "2.99美元" in grounded.messages[0]["content"]
    assert grounded.sources[0]["id"] == "菜单.md#1" and len(grounded.sources) <= 2
    assert grounded.seconds >= 0
    header = grounded.header_value()
    assert header.isascii() and header.count(",") == len(grounded.sources) - 1
    assert parse_header_value(header) == [s["id"] for s in grounded.sources]
    header.encode("latin-1")  # what HTTP servers require of header values
    nothing = route.ground([{"role": "user", "content": "zzzz"}])
    assert nothing.messages == [{"role": "user", "content": "zzzz"}] and nothing.sources == []


def test_header_value_survives_commas_spaces_and_chinese() -> None:
    ids = ["菜单.md#1", "a,b.md#0", "my doc.md#2"]
    header = Grounded([], [{"id": i} for i in ids], 0.0).header_value()
    assert header == "%E8%8F%9C%E5%8D%95.md#1,a%2Cb.md#0,my%20doc.md#2"
    assert parse_header_value(header) == ids and parse_header_value("") == []
