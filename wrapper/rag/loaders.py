"""Documents from files: find the supported files under the given paths and read each as text parts.

Every loader returns markdown-like text so that one chunker sees the structure of every format:
markdown and plain text as they are, HTML converted to markdown (headings kept) by html-to-markdown,
PDF one part per page (pypdf), JSONL one part per row. A file's source id is its path relative to the
folder that was indexed (or its name, for a file given directly).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from wrapper.errors import RagError
from wrapper.pydantic_errors import first_message

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass(frozen=True)
class Part:
    """A piece of a document with its own title: a PDF page, a JSONL row, or the whole file."""

    text: str
    title: str = ""


@dataclass(frozen=True)
class SourceFile:
    source: str  # the id shown with every chunk, e.g. "menu/burgers.md"
    path: Path
    sha256: str
    size: int


@dataclass
class Discovery:
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unsupported files found inside folders


def checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discover(paths: list[Path]) -> Discovery:
    """Every supported file under `paths`, in a stable order; hidden files and folders are left out."""
    found = Discovery()
    seen: dict[str, Path] = {}
    for root in paths:
        if not root.exists():
            raise RagError(f"{root} does not exist; give a file or a folder of documents to index.")
        if root.is_file():
            if root.suffix.lower() not in SUFFIXES:
                raise RagError(f"{root} is not a supported document; supported: {', '.join(SUFFIXES)}.")
            candidates = [(root.name, root)]
        else:
            candidates = []
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                    continue
                if path.suffix.lower() in SUFFIXES:
                    candidates.append((rel.as_posix(), path))
                else:
                    found.skipped.append(str(path))
        for source, path in candidates:
            if source in seen and seen[source] != path.resolve():
                raise RagError(
                    f"{path} and {seen[source]} would both be named {source!r} in the index; "
                    "index their common parent folder instead."
                )
            seen[source] = path.resolve()
            stat = path.stat()
            found.files.append(SourceFile(source, path.resolve(), checksum(path), stat.st_size))
    return found


class JsonlRow(BaseModel):
    """One document per row of a .jsonl file."""

    model_config = ConfigDict(extra="forbid")
    text: str
    id: str | int | None = None
    title: str | None = None
    metadata: dict[str, object] | None = None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RagError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it first."
        ) from exc


def _html(path: Path) -> list[Part]:
    import html_to_markdown

    options = html_to_markdown.ConversionOptions(extract_metadata=False, skip_images=True)
    return [Part(html_to_markdown.convert(_read_text(path), options).content or "")]


def _pdf(path: Path) -> list[Part]:
    import pypdf

    try:
        reader = pypdf.PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many types for damaged files
        raise RagError(f"{path} could not be read as a PDF ({type(exc).__name__}: {exc}).") from exc
    return [Part(text, f"page {n}") for n, text in enumerate(pages, start=1) if text.strip()]


def _jsonl(path: Path) -> list[Part]:
    parts = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = JsonlRow.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RagError(f"{path}:{line_no}: not JSON ({exc.msg}); each line must be one object.") from exc
        except ValidationError as exc:
            raise RagError(
                f'{path}:{line_no}: {first_message(exc, "row")}; each row needs "text" and may have '
                '"id", "title" and "metadata".'
            ) from exc
        name = row.title or (f"row {row.id}" if row.id is not None else f"line {line_no}")
        parts.append(Part(row.text, name))
    return parts


def load(file: SourceFile) -> list[Part]:
    suffix = file.path.suffix.lower()
    if suffix in (".html", ".htm"):
        return _html(file.path)
    if suffix == ".pdf":
        return _pdf(file.path)
    if suffix == ".jsonl":
        return _jsonl(file.path)
    return [Part(_read_text(file.path))]
