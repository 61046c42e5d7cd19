"""BM25 over pre-tokenized chunks, built and saved with bm25s.

Chosen by bench/bench_rag.py (100k chunks, 2 shared CPU cores; figures in the module docstring of
wrapper/rag/__init__.py): bm25s precomputes each term's BM25 contribution into a sparse matrix, so a
query sums a few sparse rows; rank_bm25 rescans every document per query term in Python.
Scoring is Lucene's BM25 (k1 1.5, b 0.75), the same formula the PostgreSQL store computes in SQL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np  # the `rag` extra: imported where used, so the gateway starts without it

K1 = 1.5
B = 0.75


class LexicalIndex:
    def __init__(self, bm25: Any):
        self._bm25 = bm25
        self.num_docs = int(bm25.scores["num_docs"])

    @classmethod
    def build(cls, token_lists: list[list[str]]) -> LexicalIndex:
        import bm25s

        bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        bm25.index(token_lists, show_progress=False)
        return cls(bm25)

    def save(self, folder: Path) -> None:
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        return cls(bm25s.BM25.load(str(folder), mmap=False, show_progress=False, verbosity=0))

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score of every chunk for these query terms (terms unknown to the index score 0)."""
        import numpy as np

        ids = self._bm25.get_tokens_ids(tokens)
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)


def top_k(scores: np.ndarray, k: int, min_score: float) -> list[tuple[int, float]]:
    """The k best (row, score) pairs, best first; rows that match no term (score 0) never count."""
    import numpy as np

    if k <= 0 or scores.size == 0:
        return []
    k = min(k, scores.size)
    rows = np.argpartition(-scores, k - 1)[:k]
    rows = rows[np.lexsort((rows, -scores[rows]))]  # by score, ties by position: a stable order
    return [(int(r), float(scores[r])) for r in rows if scores[r] > 0 and scores[r] >= min_score]
