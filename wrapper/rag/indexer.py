"""Index documents into a store, re-reading only the files whose checksum changed.

`index_paths` works on any target with `current_manifest()` and `apply(manifest, changed)`: the
embedded folder (store.LocalTarget) or PostgreSQL (pgstore.PostgresStore). A file whose SHA-256
matches the stored manifest (under the same chunk settings) is not read again and its chunks keep
their ids; a run where nothing changed writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wrapper.errors import IndexBrokenError, RagError
from wrapper.extras import require
from wrapper.rag.chunking import DEFAULT_OVERLAP, DEFAULT_SIZE, chunk_parts
from wrapper.rag.loaders import discover, load
from wrapper.rag.store import FileChunks, FileEntry, Manifest
from wrapper.rag.tokenize import get_tokenizer


class Target(Protocol):
    def current_manifest(self) -> Manifest | None: ...

    def apply(self, manifest: Manifest, changed: dict[str, FileChunks]) -> None: ...


@dataclass
class IndexReport:
    name: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    written: bool = False


def index_paths(
    target: Target,
    name: str,
    paths: list[Path],
    chunk_size: int | None = None,
    overlap: int | None = None,
    tokenizer: str = "jieba",
    embedding_model: Path | None = None,
) -> IndexReport:
    """Bring the index at `target` up to date with the documents under `paths`.

    `embedding_model` (a local sentence-transformers folder) adds dense vectors; once set it stays the
    index's model until another is given."""
    require("rag", "Indexing documents", RagError)
    started = time.perf_counter()
    try:
        old = target.current_manifest()
    except IndexBrokenError:
        old = None  # a damaged index is rebuilt from the documents
    size = chunk_size or (old.chunk_size if old else DEFAULT_SIZE)
    if overlap is not None:
        lap = overlap
    elif old is not None and old.overlap < size:
        lap = old.overlap
    else:  # the default, kept well under a small --chunk-size
        lap = min(DEFAULT_OVERLAP, size // 4)
    if size < 16 or not 0 <= lap < size:
        raise RagError(
            f"--chunk-size {size} / --overlap {lap}: need a size of at least 16 and 0 <= overlap < size."
        )
    model = (
        str(embedding_model.expanduser().resolve())
        if embedding_model
        else (old.embedding_model if old else None)
    )
    settings = (size, lap, tokenizer, model)
    same_settings = (
        old is not None and (old.chunk_size, old.overlap, old.tokenizer, old.embedding_model) == settings
    )
    found = discover(paths)
    if not found.files:
        raise RagError(
            f"No supported documents under {', '.join(map(str, paths))} (.txt .md .html .pdf .jsonl)."
        )

    tokenize = get_tokenizer(tokenizer)
    report = IndexReport(name, skipped=found.skipped)
    changed: dict[str, FileChunks] = {}
    if model:
        from wrapper.rag.dense import check_folder, load_embedder

        check_folder(Path(model))  # a wrong folder fails before any work; loading waits for a changed file
    files: dict[str, FileEntry] = {}
    for file in found.files:
        before = old.files.get(file.source) if old else None
        if same_settings and before is not None and before.sha256 == file.sha256:
            report.unchanged.append(file.source)
            files[file.source] = before.model_copy(update={"path": str(file.path)})
            continue
        (report.changed if before is not None else report.added).append(file.source)
        chunks = chunk_parts(file.source, load(file), size, lap)
        texts = [c.indexed_text() for c in chunks]
        vectors = load_embedder(Path(model)).encode(texts) if model and texts else None
        changed[file.source] = FileChunks(chunks, [tokenize(t) for t in texts], vectors)
        files[file.source] = FileEntry(
            path=str(file.path), sha256=file.sha256, size=file.size, chunks=len(chunks)
        )
    report.removed = sorted(set(old.files) - set(files)) if old else []
    now = time.time()
    manifest = Manifest(
        name=name,
        tokenizer=tokenizer,
        chunk_size=size,
        overlap=lap,
        created=old.created if old else now,
        updated=now,
        roots=[str(p.resolve()) for p in paths],
        files=files,
        embedding_model=model,
    )
    report.chunks = manifest.chunk_count
    if report.chunks == 0:
        raise RagError(f"The documents under {', '.join(map(str, paths))} contain no text to index.")
    if changed or report.removed or old is None or not same_settings or old.roots != manifest.roots:
        target.apply(manifest, changed)
        report.written = True
    report.seconds = time.perf_counter() - started
    return report
