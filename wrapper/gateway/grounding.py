"""Retrieval on the gateway: model routes with a `rag:` block, and POST /v1/rag/{index}/search.

    models:
      - name: conch
        upstream: http://127.0.0.1:8000
        rag: {index: krusty-docs, top_k: 4, min_score: 0.0, max_context_tokens: 1500}

Every index is opened when the gateway is built (before it listens): a missing or damaged index stops
the start with one sentence, never a per-request error. Per chat request to such a model, `ground()`
retrieves on the latest user message plus recent user turns, puts the chunks (delimited, each with its
source id) into the one first system message the upstream receives, and leaves the sources on the call.
The answer then carries them: `sources` on the completion and on the stream's finishing chunk (and the
usage chunk, when asked for), and the ids in the `x-lfwrap-sources` header (percent-encoded UTF-8,
comma-separated). The access log gets the ids, never a chunk's text.

Opting out, per request: the body field `"rag": false`, or the header `x-lfwrap-rag: off`. The field is
removed before the request goes upstream either way (LLaMA-Factory would drop it silently).

Where retrieval runs, measured by bench/bench_rag_gateway.py (2,000 groundings by 16 tasks, inline vs
asyncio.to_thread, medians of 3 alternating rounds, 2 cores shared with other work, load ~7):
    bundled menu (~20 chunks)  ground() p50 0.05-0.10 ms   inline 1.19x / 1.71x the thread's throughput
    10k chunks                 p50 0.18 ms                 inline 1.09x
    100k chunks                p50 1.0-1.5 ms              inline 0.91x / 1.20x (two runs); the event loop's
                                                           p99 lag 180 ms inline against 27 ms threaded
So small indexes are grounded inline (a thread hop costs more than the search), and indexes of
THREAD_FROM_CHUNKS chunks or more in a worker thread, where a search is long enough that holding the
event loop would stall every other request and stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from wrapper.errors import RagError
from wrapper.gateway.keys import KeyRecord
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import ApiError
from wrapper.gateway.settings import ModelRoute
from wrapper.rag.retriever import Retriever
from wrapper.rag.route import Grounded, RouteRetriever
from wrapper.suggest import SENTENCE, did_you_mean

log = logging.getLogger("lfwrap.gateway")

OPT_OUT_HEADER = b"x-lfwrap-rag"
SOURCES_HEADER = b"x-lfwrap-sources"
_OFF = {b"off", b"false", b"0", b"no"}
_ON = {b"on", b"true", b"1", b"yes"}
THREAD_FROM_CHUNKS = 50_000  # see the measurements above


class SearchRequest(BaseModel):
    """POST /v1/rag/{index}/search: the chunks a question retrieves, for debugging a route."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=8000)
    top_k: int | None = Field(default=None, ge=1, le=100, description="Default: the route's top_k.")


class SearchHit(BaseModel):
    rank: int
    id: str
    source: str
    position: int
    title: str
    score: float
    text: str


class SearchAnswer(BaseModel):
    object: str = "list"
    index: str
    query: str
    data: list[SearchHit]


class RagRoutes:
    """The retrieval-augmented routes of one gateway, their open indexes and the search endpoint."""

    def __init__(self, routes: Sequence[ModelRoute], metrics: Metrics):
        self.metrics = metrics
        self.by_model: dict[str, RouteRetriever] = {}
        self.by_index: dict[str, tuple[RouteRetriever, list[str]]] = {}  # index name -> (route, models)
        self.threaded: set[str] = set()  # indexes searched in a worker thread (THREAD_FROM_CHUNKS)
        opened: dict[tuple[str, str | None], Retriever] = {}
        for route in routes:
            if route.rag is None:
                continue
            where = (route.rag.index, route.rag.postgres)
            try:
                retriever = RouteRetriever(route.rag, opened.get(where))
            except RagError as exc:
                raise type(exc)(f"Model {route.name!r} (rag.index {route.rag.index!r}): {exc}") from exc
            opened[where] = retriever.retriever
            self.by_model[route.name] = retriever
            name = retriever.retriever.manifest.name
            if retriever.retriever.manifest.chunk_count >= THREAD_FROM_CHUNKS:
                self.threaded.add(name)
            self.by_index.setdefault(name, (retriever, []))[1].append(route.name)

    def __contains__(self, model: str) -> bool:
        return model in self.by_model

    async def ground(self, call: Any) -> None:
        """Ground `call` (app.Call, a chat request to a rag route): messages and body for the upstream,
        `call.rag` for the answer and the log. Raises ApiError for a bad opt-out value."""
        data = call.data
        wanted = data.pop("rag", True)
        if not isinstance(wanted, bool):
            raise ApiError(400, "'rag' must be true or false (false: answer without retrieval).", param="rag")
        for name, value in call.headers:
            if name == OPT_OUT_HEADER:
                value = value.strip().lower()
                if value not in _OFF and value not in _ON:
                    raise ApiError(
                        400, "The x-lfwrap-rag header must be 'on' or 'off'.", code="invalid_request"
                    )
                wanted = wanted and value in _ON
        if not wanted:
            call.rag = "off"
        else:
            retriever = self.by_model[call.model]
            try:
                if retriever.retriever.manifest.name in self.threaded:
                    grounded = await asyncio.to_thread(retriever.ground, data["messages"])
                else:
                    grounded = retriever.ground(data["messages"])
            except Exception:
                log.exception("request %s: retrieval failed", call.request_id)
                raise ApiError(
                    503,
                    f"Model {call.model!r}: retrieval from its index failed (request id {call.request_id}); "
                    "see the gateway log.",
                    code="rag_unavailable",
                ) from None
            self.metrics.observe_retrieval(retriever.retriever.manifest.name, grounded.seconds)
            data["messages"] = grounded.messages
            call.rag = grounded
        call.body = orjson.dumps(data)

    async def search(self, index: str, request: SearchRequest, record: KeyRecord | None) -> SearchAnswer:
        found = self.by_index.get(index)
        visible = [
            name
            for name, (_, models) in self.by_index.items()
            if record is None or any(map(record.allows, models))
        ]
        if found is None or index not in visible:
            hint = did_you_mean(index, visible, SENTENCE)
            raise ApiError(
                404,
                f"No index {index!r} is served by a model this key may use.{hint}",
                code="index_not_found",
                param="index",
            )
        route = found[0]
        start = time.perf_counter()
        args = (request.query, (), request.top_k or route.route.top_k, route.route.min_score)
        if index in self.threaded:
            hits = await asyncio.to_thread(route.retriever.search, *args)
        else:
            hits = route.retriever.search(*args)
        self.metrics.observe_retrieval(index, time.perf_counter() - start)
        data = [
            SearchHit(
                rank=rank,
                id=hit.id,
                source=hit.chunk.source,
                position=hit.chunk.position,
                title=hit.chunk.title or "",
                score=round(hit.score, 4),
                text=hit.chunk.text,
            )
            for rank, hit in enumerate(hits, 1)
        ]
        return SearchAnswer(index=index, query=request.query, data=data)


def log_field(rag: Grounded | str | None) -> str | None:
    """The access log's `rag=` value: the chunk ids (as in the header), `off`, or None (no rag route)."""
    if rag is None or isinstance(rag, str):
        return rag
    return rag.header_value()


def sources_header(rag: Grounded | str | None) -> list[tuple[bytes, bytes]]:
    if rag is None or isinstance(rag, str):
        return []
    return [(SOURCES_HEADER, rag.header_value().encode())]


def sources_extra(rag: Grounded | str | None) -> dict[str, Any] | None:
    """The fields added to the answer (and the final stream chunk)."""
    if rag is None or isinstance(rag, str):
        return None
    return {"sources": rag.sources}
