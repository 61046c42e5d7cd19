"""Optional dense retrieval: sentence embeddings from a local model folder, cosine similarity in numpy.

Needs the `rag-dense` extra (sentence-transformers). The model is a folder on disk given to
`lfwrap rag index --embedding-model PATH`; it is loaded with local_files_only, so nothing is fetched.
Vectors are L2-normalised float32 rows stored as dense.npy beside the BM25 matrices, in chunk order.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from wrapper.errors import RagError

BATCH = 64


def check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise RagError(f"{folder} is not a local embedding model folder (no config.json or modules.json).")


class Embedder:
    def __init__(self, folder: Path):
        self.folder = folder
        check_folder(folder)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RagError(
                "Dense retrieval needs sentence-transformers: pip install 'lfwrap[rag-dense]'."
            ) from exc
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every open
        try:
            self._model: Any = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:  # transformers raises many types for a bad folder
            raise RagError(
                f"{folder} could not be loaded as an embedding model ({type(exc).__name__}: {exc})."
            ) from exc

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = self._model.encode(
            texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_embedder(folder: Path) -> Embedder:
    """One loaded model per folder and process: several indexes may share it."""
    return Embedder(folder)


def cosine_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k rows most similar to `query` (both normalised), best first."""
    if k <= 0 or vectors.shape[0] == 0:
        return []
    scores = vectors @ query
    k = min(k, scores.size)
    rows = np.argpartition(-scores, k - 1)[:k]
    rows = rows[np.lexsort((rows, -scores[rows]))]
    return [(int(r), float(scores[r])) for r in rows]
