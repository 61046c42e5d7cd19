"""The embedded store: one folder per index under $LFWRAP_HOME/rag/NAME.

    manifest.json   settings and, per source file, its path, SHA-256 and chunk count
    chunks.jsonl    one chunk per line (id, source, position, title, text), in file order
    tokens.txt      the same chunks' search terms, one line each (re-indexing reuses them)
    bm25/           the bm25s matrices
    dense.npy       with an embedding model: one normalised vector per chunk, in the same order

A write builds the new folder beside the old one and swaps it in, so a reader never sees half an index.
Every problem reading it is raised by `LocalStore.open` as IndexMissingError or IndexBrokenError.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from wrapper import home
from wrapper.errors import IndexBrokenError, IndexMissingError, UsageError
from wrapper.rag.chunking import Chunk, Hit
from wrapper.rag.lexical import LexicalIndex, top_k
from wrapper.suggest import SENTENCE, did_you_mean

if TYPE_CHECKING:
    import numpy as np  # the `rag` extra: imported where used, so the gateway starts without it

FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str
    size: int
    chunks: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT
    name: str
    tokenizer: str = "jieba"
    chunk_size: int
    overlap: int
    created: float
    updated: float
    roots: list[str]
    files: dict[str, FileEntry]
    embedding_model: str | None = None  # a local model folder: dense retrieval fused with BM25

    @property
    def chunk_count(self) -> int:
        return sum(f.chunks for f in self.files.values())


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"{name!r} is not a valid index name; use letters, digits, '.', '_' or '-' (at most 64)."
        )
    return name


def rag_dir() -> Path:
    path = home.home() / "rag"
    path.mkdir(parents=True, exist_ok=True)
    return path


def index_names() -> list[str]:
    return sorted(p.name for p in rag_dir().iterdir() if p.is_dir() and _NAME.match(p.name))


def resolve(name_or_path: str | Path) -> Path:
    """An index name under $LFWRAP_HOME/rag, or a path to an index folder."""
    text = str(name_or_path)
    if _NAME.match(text) and "/" not in text:
        return rag_dir() / text
    return Path(text).expanduser()


def _missing(folder: Path) -> IndexMissingError:
    hint = did_you_mean(folder.name, index_names(), SENTENCE)
    return IndexMissingError(
        f"No retrieval index at {folder}; create it with `lfwrap rag index {folder.name} PATH...`.{hint}"
    )


@dataclass
class FileChunks:
    """A file's chunks as indexed: their search terms and, with an embedding model, their vectors."""

    chunks: list[Chunk]
    tokens: list[list[str]]
    vectors: np.ndarray | None = None


class LocalStore:
    """An opened embedded index: its manifest, chunks, BM25 matrices (and vectors), all in memory."""

    def __init__(self, folder: Path, manifest: Manifest, chunks: list[Chunk], lexical: LexicalIndex):
        self.folder = folder
        self.manifest = manifest
        self.chunks = chunks
        self.lexical = lexical
        self.vectors: np.ndarray | None = None
        self.embedder: Any = None

    @property
    def dense(self) -> bool:
        return self.vectors is not None

    @classmethod
    def open(cls, name_or_path: str | Path) -> LocalStore:
        folder = resolve(name_or_path)
        manifest = read_manifest(folder)
        if manifest is None:
            raise _missing(folder)
        try:
            chunks = [_chunk(json.loads(line)) for line in (folder / "chunks.jsonl").open(encoding="utf-8")]
            lexical = LexicalIndex.load(folder / "bm25")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexBrokenError(
                f"The index at {folder} is damaged ({type(exc).__name__}: {exc}); "
                f"rebuild it with `lfwrap rag remove {folder.name}` then `lfwrap rag index`."
            ) from exc
        if not len(chunks) == lexical.num_docs == manifest.chunk_count:
            raise IndexBrokenError(
                f"The index at {folder} is inconsistent ({len(chunks)} chunks, {lexical.num_docs} in BM25, "
                f"{manifest.chunk_count} in manifest.json); rebuild it with `lfwrap rag index`."
            )
        store = cls(folder, manifest, chunks, lexical)
        if manifest.embedding_model:
            import numpy as np

            from wrapper.rag.dense import load_embedder

            try:
                store.vectors = np.load(folder / "dense.npy")
            except (OSError, ValueError) as exc:
                raise IndexBrokenError(
                    f"The vectors of the index at {folder} cannot be read ({exc}); "
                    "rebuild it with `lfwrap rag index`."
                ) from exc
            if store.vectors.ndim != 2 or store.vectors.shape[0] != len(chunks):
                raise IndexBrokenError(
                    f"The index at {folder} has {store.vectors.shape[0]} vectors for {len(chunks)} chunks; "
                    "rebuild it with `lfwrap rag index`."
                )
            store.embedder = load_embedder(
                Path(manifest.embedding_model)
            )  # loaded now, not at the first query
        return store

    def search(self, queries: Sequence[tuple[list[str], float]], k: int, min_score: float) -> list[Hit]:
        """Chunks ranked by the weighted sum of each query's BM25 scores."""
        total = None
        for tokens, weight in queries:
            scores = self.lexical.scores(tokens) * weight
            total = scores if total is None else total + scores
        if total is None:
            return []
        return [Hit(self.chunks[row], score) for row, score in top_k(total, k, min_score)]

    def dense_search(self, text: str, k: int) -> list[Hit]:
        """Chunks by cosine similarity of their vectors to `text`'s (none without an embedding model)."""
        if self.vectors is None or not text.strip():
            return []
        from wrapper.rag.dense import cosine_top

        query = self.embedder.encode([text])[0]
        return [Hit(self.chunks[row], score) for row, score in cosine_top(self.vectors, query, k)]


def _chunk(row: dict) -> Chunk:
    return Chunk(row["id"], row["source"], int(row["position"]), row["title"], row["text"])


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of the index at `folder`, None when there is none, IndexBrokenError when unreadable."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise IndexBrokenError(
            f"{path} cannot be read ({str(exc).splitlines()[0]}); rebuild the index with `lfwrap rag index`."
        ) from exc
    if manifest.format != FORMAT:
        raise IndexBrokenError(f"{path} has format {manifest.format}, this lfwrap reads {FORMAT}; re-index.")
    return manifest


def read_tokens(folder: Path) -> list[list[str]]:
    with (folder / "tokens.txt").open(encoding="utf-8") as fh:
        return [line.split() for line in fh.read().splitlines()]


def write(
    folder: Path,
    manifest: Manifest,
    chunks: list[Chunk],
    tokens: list[list[str]],
    vectors: np.ndarray | None = None,
) -> None:
    """Write a whole index to `folder` (replacing what is there) in one swap."""
    import numpy as np

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
            for c in chunks:
                row = {
                    "id": c.id,
                    "source": c.source,
                    "position": c.position,
                    "title": c.title,
                    "text": c.text,
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        with (staging / "tokens.txt").open("w", encoding="utf-8") as fh:
            fh.writelines(" ".join(t) + "\n" for t in tokens)
        LexicalIndex.build(tokens).save(staging / "bm25")
        if vectors is not None:
            np.save(staging / "dense.npy", vectors)
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        # Two writers of one index swap one after the other (the last one's index stays).
        with (folder.parent / f".{folder.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if folder.exists():
                folder.rename(old)
            staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove(name: str) -> Path:
    folder = rag_dir() / check_name(name)
    if read_manifest(folder) is None and not folder.exists():
        raise _missing(folder)
    shutil.rmtree(folder)
    (folder.parent / f".{folder.name}.lock").unlink(missing_ok=True)
    return folder


class LocalTarget:
    """Writes an embedded index folder: what `index_paths` needs from any store."""

    def __init__(self, folder: Path):
        self.folder = folder

    def current_manifest(self) -> Manifest | None:
        """The stored manifest; None when there is no index or it cannot be opened (then rebuild all)."""
        try:
            return LocalStore.open(self.folder).manifest
        except (IndexMissingError, IndexBrokenError):
            return None

    def apply(self, manifest: Manifest, changed: dict[str, FileChunks]) -> None:
        """Store `manifest`'s files: those in `changed` from their new chunks, the rest as stored now."""
        import numpy as np

        kept: dict[str, FileChunks] = {}
        kept_vectors: dict[str, list[np.ndarray]] = {}
        if any(source not in changed for source in manifest.files):
            rows = (self.folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
            old_vectors = np.load(self.folder / "dense.npy") if manifest.embedding_model else None
            for n, (row, tokens) in enumerate(zip(rows, read_tokens(self.folder), strict=True)):
                chunk = _chunk(json.loads(row))
                if chunk.source in manifest.files and chunk.source not in changed:
                    entry = kept.setdefault(chunk.source, FileChunks([], []))
                    entry.chunks.append(chunk)
                    entry.tokens.append(tokens)
                    if old_vectors is not None:
                        kept_vectors.setdefault(chunk.source, []).append(old_vectors[n])
        chunks: list[Chunk] = []
        tokens_out: list[list[str]] = []
        vectors: list[np.ndarray] = []
        for source in manifest.files:
            entry = changed.get(source) or kept.get(source) or FileChunks([], [])
            chunks += entry.chunks
            tokens_out += entry.tokens
            if manifest.embedding_model and entry.chunks:
                rows_of = entry.vectors if source in changed else kept_vectors[source]
                vectors.append(np.asarray(rows_of, dtype=np.float32).reshape(len(entry.chunks), -1))
        write(self.folder, manifest, chunks, tokens_out, np.concatenate(vectors) if vectors else None)
