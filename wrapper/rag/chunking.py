"""Split documents into chunks by structure, to a size budget, with overlap.

A chunk never crosses a heading: each section (the text under one markdown heading, one PDF page or one
JSONL row) is packed paragraph by paragraph up to `size` estimated tokens. A paragraph over the budget is
split into sentences, a sentence over it into even slices. A chunk that continues a section starts with
about `overlap` tokens from the end of the previous one (whole sentences where they fit).
A chunk's id is `<source>#<position>`, position counting the file's chunks from 0: indexing the same
file with the same settings always gives the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from wrapper.rag.loaders import Part
from wrapper.rag.tokenize import estimate_tokens

DEFAULT_SIZE = 300
DEFAULT_OVERLAP = 40

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")  # inside a code block, "# comment" is no heading
# Sentence ends: CJK punctuation anywhere, Latin punctuation only before a space (keeps "2.99" whole).
_SENTENCE_END = re.compile(r"(?<=[。！？；])|(?<=[.!?;])\s+|\n")
_CJK_END = re.compile(r"[。！？；，、\u4e00-\u9fff]$")


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    position: int
    title: str  # where it sits: "page 2", "Menu › Burgers", a JSONL row's title
    text: str

    def indexed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


def _sections(part: Part) -> Iterator[tuple[str, list[str]]]:
    stack: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    lines: list[str] = []

    def title() -> str:
        return " › ".join([t for t in [part.title, *(text for _, text in stack)] if t])

    in_fence = False
    for line in part.text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or _FENCE.match(line):
            lines.append(line.rstrip())  # a code block stays one paragraph, blank lines included
            continue
        match = _HEADING.match(line)
        if match or not line.strip():
            if lines:
                paragraphs.append("\n".join(lines))
                lines = []
        if match:
            if paragraphs:
                yield title(), paragraphs
                paragraphs = []
            level = len(match.group(1))
            stack = [(lvl, text) for lvl, text in stack if lvl < level] + [(level, match.group(2))]
        elif line.strip():
            lines.append(line.rstrip())
    if lines:
        paragraphs.append("\n".join(lines))
    if paragraphs:
        yield title(), paragraphs


def _slices(text: str, size: int) -> list[str]:
    per_token = max(1, round(len(text) / max(1, estimate_tokens(text))))
    step = max(1, size * per_token)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _pieces(paragraph: str, size: int) -> Iterator[str]:
    if estimate_tokens(paragraph) <= size:
        yield paragraph
        return
    for sentence in _SENTENCE_END.split(paragraph):
        sentence = sentence.strip()
        if not sentence:
            continue
        if estimate_tokens(sentence) <= size:
            yield sentence
        else:
            yield from _slices(sentence, size)


def _tail(text: str, overlap: int) -> str:
    if overlap <= 0:
        return ""
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    kept: list[str] = []
    while sentences and estimate_tokens(" ".join([sentences[-1], *kept])) <= overlap:
        kept.insert(0, sentences.pop().strip())
    if kept:
        return " ".join(kept)
    return _slices(text[::-1], overlap)[0][::-1].lstrip()  # the last `overlap` tokens' worth


def _join(pieces: list[tuple[bool, str]]) -> str:
    # Paragraphs are separated by a blank line; sentences of one paragraph by a space (none after CJK).
    out = ""
    for starts_paragraph, text in pieces:
        if out:
            out += "\n\n" if starts_paragraph else ("" if _CJK_END.search(out) else " ")
        out += text
    return out


def _pack(paragraphs: list[str], size: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current: list[tuple[bool, str]] = []
    used = 0
    fresh = False  # whether `current` holds more than the overlap carried over
    for paragraph in paragraphs:
        for n, piece in enumerate(_pieces(paragraph, size)):
            cost = estimate_tokens(piece)
            if fresh and used + cost > size:
                chunks.append(_join(current))
                tail = _tail(chunks[-1], overlap)
                current, used = ([(True, tail)], estimate_tokens(tail)) if tail else ([], 0)
                fresh = False
            current.append((n == 0, piece))
            used += cost
            fresh = True
    if fresh:
        chunks.append(_join(current))
    return chunks


def chunk_parts(
    source: str, parts: list[Part], size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"chunk size {size} and overlap {overlap}: need size >= 1 and 0 <= overlap < size")
    chunks: list[Chunk] = []
    for part in parts:
        for title, paragraphs in _sections(part):
            for text in _pack(paragraphs, size, overlap):
                position = len(chunks)
                chunks.append(Chunk(f"{source}#{position}", source, position, title, text))
    return chunks


@dataclass(frozen=True)
class Hit:
    """A chunk found by a search, with its score (higher is better)."""

    chunk: Chunk
    score: float

    @property
    def id(self) -> str:
        return self.chunk.id

    def source_entry(self) -> dict[str, object]:
        """What a caller is told about a source: never the text, so logs can carry it."""
        c = self.chunk
        return {
            "id": c.id,
            "source": c.source,
            "position": c.position,
            "title": c.title,
            "score": round(self.score, 4),
        }
