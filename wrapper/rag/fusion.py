"""Reciprocal rank fusion: one ranking from several, without comparing their score scales.

score(d) = sum over rankings of 1 / (K + rank of d), rank from 1 (Cormack, Clarke and Buettcher, 2009;
K = 60 as there). BM25 scores and cosine similarities live on different scales; their ranks do not.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = 60
T = TypeVar("T", bound=Hashable)


def rrf(rankings: Sequence[Sequence[T]], k: int = K) -> list[tuple[T, float]]:
    """Items of all rankings (each best first), fused best first; ties keep first-seen order."""
    scores: dict[T, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])
