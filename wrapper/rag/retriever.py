"""What the gateway and `lfwrap rag query` call: open an index once, then search it per request.

Opening reads everything (and raises IndexMissingError / IndexBrokenError with a one-sentence fix), so
a server can refuse to start on a bad index instead of failing each request. A search is the latest
question plus, at a lower weight, the last few earlier user turns, so "and how much is it?" still finds
the dish named one turn before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from wrapper.errors import RagError
from wrapper.extras import require
from wrapper.rag.chunking import Hit
from wrapper.rag.fusion import rrf
from wrapper.rag.store import LocalStore, Manifest
from wrapper.rag.tokenize import get_tokenizer

HISTORY_TURNS = 2  # earlier user messages searched along with the latest one
HISTORY_WEIGHT = 0.5  # their weight against the latest message's 1.0
FUSION_DEPTH = 50  # candidates taken from each of BM25 and dense before reciprocal rank fusion


class SearchStore(Protocol):
    @property
    def manifest(self) -> Manifest | None: ...

    def search(self, queries: Sequence[tuple[list[str], float]], k: int, min_score: float) -> list[Hit]: ...

    @property
    def dense(self) -> bool: ...

    def dense_search(self, text: str, k: int) -> list[Hit]: ...


class Retriever:
    def __init__(self, store: SearchStore):
        if store.manifest is None:
            raise ValueError("open the store before searching it")
        self.store = store
        self.manifest: Manifest = store.manifest
        self._tokenize = get_tokenizer(self.manifest.tokenizer)

    @classmethod
    def open(cls, name_or_path: str | Path, postgres: str | None = None) -> Retriever:
        """The embedded index named `name_or_path` under $LFWRAP_HOME/rag (or at that folder), or,
        with `postgres` (a libpq DSN or URL), the index of that name in that database."""
        require("rag", "Retrieval", RagError)
        if postgres:
            from wrapper.rag.pgstore import PostgresStore

            return cls(PostgresStore.open(postgres, str(name_or_path)))
        return cls(LocalStore.open(name_or_path))

    def search(
        self, query: str, history: Sequence[str] = (), top_k: int = 4, min_score: float = 0.0
    ) -> list[Hit]:
        """The `top_k` best chunks for `query`, best first.

        BM25 alone: chunks sharing a term with the query (or the recent `history`, oldest first) and
        scoring at least `min_score`; a hit's score is its BM25 score. With an embedding model: those
        BM25 candidates and the chunks nearest in meaning, fused by reciprocal rank; the score is then
        the fused one (about 0.01-0.03)."""
        turns = list(history)[-HISTORY_TURNS:]
        queries = [(self._tokenize(query), 1.0)] + [(self._tokenize(turn), HISTORY_WEIGHT) for turn in turns]
        queries = [(tokens, w) for tokens, w in queries if tokens]
        if not self.store.dense:
            return self.store.search(queries, top_k, min_score)
        lexical = self.store.search(queries, max(top_k, FUSION_DEPTH), min_score)
        dense = self.store.dense_search("\n".join([*turns, query]), max(top_k, FUSION_DEPTH))
        chunks = {h.id: h.chunk for h in [*lexical, *dense]}
        fused = rrf([[h.id for h in lexical], [h.id for h in dense]])
        return [Hit(chunks[chunk_id], score) for chunk_id, score in fused[:top_k]]
