"""What a server needs to ground one model's chat requests in an index: settings and one call.

A model route names its index in YAML, e.g.
    rag: {index: krusty-docs, top_k: 4, min_score: 0.0, max_context_tokens: 1500}
`RagRoute` validates that block (unknown keys refused); `RouteRetriever(route)` opens the index at once,
so a server refuses to start on a missing or damaged index; `ground(messages)` then retrieves on the latest
user message (plus recent user turns), merges the context into the system message and returns the
messages for the upstream, the sources for the caller, and the retrieval time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from wrapper.rag.grounding import ground_messages, query_from_messages
from wrapper.rag.retriever import Retriever


class RagRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: str = Field(min_length=1, description="An index name under $LFWRAP_HOME/rag, or its folder.")
    top_k: int = Field(4, ge=1, le=100)
    min_score: float = Field(0.0, ge=0.0)
    max_context_tokens: int = Field(1500, ge=1)
    postgres: str | None = Field(None, description="Read the index from PostgreSQL (a libpq DSN or URL).")


@dataclass(frozen=True)
class Grounded:
    messages: list[dict[str, Any]]  # what the upstream receives
    sources: list[dict[str, object]]  # ids, files, titles, scores: never chunk text, safe to log
    seconds: float  # retrieval and grounding time

    def header_value(self) -> str:
        """The source ids for an HTTP header: percent-encoded UTF-8 (ids such as 菜单.md#1 are not
        latin-1), comma-separated. `parse_header_value` reverses it."""
        return ",".join(quote(str(s["id"]), safe="#./-_~:@") for s in self.sources)


def parse_header_value(value: str) -> list[str]:
    return [unquote(part) for part in value.split(",") if part]


class RouteRetriever:
    def __init__(self, route: RagRoute, retriever: Retriever | None = None):
        """Opens the index unless `retriever` (one already open on the same index) is given."""
        self.route = route
        self.retriever = retriever or Retriever.open(route.index, postgres=route.postgres)

    def ground(self, messages: Sequence[dict[str, Any]]) -> Grounded:
        start = time.perf_counter()
        query, history = query_from_messages(messages)
        hits = self.retriever.search(query, history, self.route.top_k, self.route.min_score) if query else []
        grounded, sources = ground_messages(messages, hits, self.route.max_context_tokens)
        return Grounded(grounded, sources, time.perf_counter() - start)
