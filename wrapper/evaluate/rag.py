"""`lfwrap eval RUN --dataset NAME --rag-index INDEX`: the fine-tuned model with retrieval, on the same rows.

The rows of --dataset (alpaca format; the first --max-samples of each) are grounded as the gateway grounds
a chat request: retrieval on the row's question (instruction + input) and its earlier user turns, the chunks
merged into the row's system prompt by `ground_messages`. Those grounded rows go to LLaMA-Factory's predict
and eval passes like any dataset, with the fine-tuned model: metrics.json then has `tuned_rag` next to
`tuned` (the same questions without retrieval), and `rag` says what was retrieved.

Planning reads the dataset and the index and writes nothing; `write_rag_data` writes the grounded rows
into the report folder when the evaluation starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrapper.errors import DatasetError, UsageError

RAG_DATASET = "lfwrap_rag_eval"
RAG_DIR = "rag-data"


@dataclass(frozen=True)
class RagEval:
    index: str
    top_k: int
    max_context_tokens: int
    rows: tuple[dict[str, Any], ...]  # alpaca rows, the system prompt grounded
    sources: tuple[tuple[str, ...], ...]  # the chunk ids each row was given

    def summary(self) -> dict[str, Any]:
        """metrics.json's `rag` entry."""
        return {
            "index": self.index,
            "top_k": self.top_k,
            "max_context_tokens": self.max_context_tokens,
            "rows_with_sources": sum(1 for ids in self.sources if ids),
        }


def _rows(folder: Path, name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    if (entry.get("formatting") or "alpaca") != "alpaca" or not entry.get("file_name"):
        raise UsageError(
            f"--rag-index grounds alpaca-format datasets from a local file; dataset '{name}' is "
            f"{entry.get('formatting') or 'remote'}: evaluate it without --rag-index, or convert it to "
            "alpaca."
        )
    path = folder / str(entry["file_name"])
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"Cannot read dataset '{name}' at {path} ({exc}); check it with `lfwrap data check`."
        ) from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DatasetError(
            f"Dataset '{name}' at {path} is not a list of rows; check it with `lfwrap data check`."
        )
    return rows


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def plan_rag_rows(
    names: list[str],
    folder: Path,
    max_samples: int | None,
    index: str,
    top_k: int = 4,
    max_context_tokens: int = 1500,
) -> RagEval:
    """Every row of `names` (registered in `folder`), grounded in `index`; nothing is written."""
    from wrapper.datasets.info import read_dataset_info
    from wrapper.rag.grounding import ground_messages, query_from_messages
    from wrapper.rag.retriever import Retriever

    retriever = Retriever.open(index)  # IndexMissingError / IndexBrokenError before any LLaMA-Factory work
    info = read_dataset_info(folder / "dataset_info.json")
    rows: list[dict[str, Any]] = []
    sources: list[tuple[str, ...]] = []
    for name in names:
        entry = info[name]
        columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
        columns.update(
            {k: v for k, v in (entry.get("columns") or {}).items() if k in columns or k == "history"}
        )
        for row in _rows(folder, name, entry)[:max_samples]:
            prompt, query = _text(row.get(columns["prompt"])), _text(row.get(columns["query"]))
            question = f"{prompt}\n{query}" if query else prompt
            history = row.get(columns.get("history", "history")) or []
            messages: list[dict[str, Any]] = []
            system = _text(row.get(columns["system"]))
            if system:
                messages.append({"role": "system", "content": system})
            for turn in history if isinstance(history, list) else []:
                if isinstance(turn, list) and len(turn) == 2:
                    messages.append({"role": "user", "content": _text(turn[0])})  # earlier questions
            messages.append({"role": "user", "content": question})
            text, earlier = query_from_messages(messages)
            hits = retriever.search(text, earlier, top_k) if text else []
            grounded, used = ground_messages(messages, hits, max_context_tokens)
            out: dict[str, Any] = {
                "instruction": prompt,
                "input": query,
                "output": row.get(columns["response"]),
            }
            # "" keeps the template's default system prompt, as a row without one does
            out["system"] = grounded[0]["content"] if grounded and grounded[0]["role"] == "system" else ""
            if isinstance(history, list) and history:
                out["history"] = history
            rows.append(out)
            sources.append(tuple(str(s["id"]) for s in used))
    if not rows:
        raise UsageError(f"--dataset {','.join(names)} has no rows to evaluate with --rag-index.")
    return RagEval(index, top_k, max_context_tokens, tuple(rows), tuple(sources))


def write_rag_data(out: Path, rag: RagEval) -> Path:
    """RAG_DIR in the report folder: the grounded rows and their dataset_info.json; the folder."""
    folder = out / RAG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{RAG_DATASET}.json").write_text(
        json.dumps(list(rag.rows), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    if any("history" in row for row in rag.rows):  # a column no row has would be missing from the data
        columns["history"] = "history"
    entry = {"file_name": f"{RAG_DATASET}.json", "formatting": "alpaca", "columns": columns}
    (folder / "dataset_info.json").write_text(
        json.dumps({RAG_DATASET: entry}, indent=2) + "\n", encoding="utf-8"
    )
    return folder
