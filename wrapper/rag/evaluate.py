"""`lfwrap rag eval`: recall@k and MRR of an index on questions with known sources.

Each line of the questions file is {"question": "...", "sources": ["menu.md#2", "faq.jsonl"]}: an
expected source is a chunk id, or a source file (any of its chunks counts).
recall@k: the share of a question's expected sources found in the top k, averaged over questions.
MRR: the mean of 1/rank of the first relevant chunk in the top k (0 when none is there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wrapper.errors import RagError
from wrapper.pydantic_errors import first_message
from wrapper.rag.retriever import Retriever


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    sources: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class QuestionResult:
    question: str
    expected: list[str]
    found: list[str]  # expected sources present in the top k
    first_rank: int | None  # 1-based rank of the first relevant chunk
    top_ids: list[str]


@dataclass(frozen=True)
class EvalResult:
    k: int
    rows: list[QuestionResult]

    @property
    def recall(self) -> float:
        return sum(len(r.found) / len(r.expected) for r in self.rows) / len(self.rows)

    @property
    def mrr(self) -> float:
        return sum(1 / r.first_rank if r.first_rank else 0.0 for r in self.rows) / len(self.rows)


def load_questions(path: Path) -> list[Question]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RagError(f"Cannot read the questions file {path} ({exc}).") from exc
    questions = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            questions.append(Question.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else first_message(exc, "row")
            raise RagError(
                f"{path}:{n}: {detail}; each line must be "
                '{"question": "...", "sources": ["file.md#0", "other.md"]}.'
            ) from exc
    if not questions:
        raise RagError(f"{path} holds no questions.")
    return questions


def evaluate(retriever: Retriever, questions: list[Question], k: int = 4) -> EvalResult:
    rows = []
    for q in questions:
        hits = retriever.search(q.question, top_k=k)
        found = [e for e in q.sources if any(e in (h.id, h.chunk.source) for h in hits)]
        ranks = [i for i, h in enumerate(hits, start=1) if {h.id, h.chunk.source} & set(q.sources)]
        rows.append(
            QuestionResult(q.question, q.sources, found, ranks[0] if ranks else None, [h.id for h in hits])
        )
    return EvalResult(k, rows)
