"""Rows longer than cutoff_len, which LLaMA-Factory truncates without a word, counted with the model's
own tokenizer when it is on disk (a local model folder with tokenizer.json).

    report = token_lengths([path], spec, tokenizer_file(model), cutoff_len=1024)
    report.over, report.percentiles   # rows over the cutoff; p50/p90/p99/max tokens per row

The `tokenizers` package (installed with LLaMA-Factory, the `local` extra) is imported only here and only
when a tokenizer file exists, so validate stays fast and works without it. Counts are of the row's text
(prompt, input, history, answers, system), without the chat template's few special tokens per turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.datasets.rows import Spec, rule_set

BATCH = 512


@dataclass
class LengthReport:
    rows: int = 0
    over: int = 0
    cutoff_len: int = 0
    percentiles: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        spread = ", ".join(f"{name} {value}" for name, value in self.percentiles.items())
        share = 100.0 * self.over / self.rows if self.rows else 0.0
        return (
            f"{self.over} of {self.rows} rows ({share:.1f}%) exceed cutoff_len {self.cutoff_len} tokens and "
            f"would be truncated; tokens per row: {spread}"
        )


def tokenizer_file(model: Any) -> Path | None:
    """The tokenizer.json of a local model folder, or None (a hub id, or no fast tokenizer file)."""
    if not isinstance(model, str) or not model:
        return None
    path = Path(model).expanduser() / "tokenizer.json"
    return path if path.is_file() else None


def _texts(row: dict, spec: Spec) -> str:
    columns = spec.columns
    if spec.formatting == "alpaca" or spec.pt:
        names = ("prompt", "query") if spec.pt else ("system", "prompt", "query", "response", "chosen")
        parts = [row.get(columns[name]) for name in names if name in columns]
        history = row.get(columns["history"]) if "history" in columns and not spec.pt else None
        for pair in history if isinstance(history, list) else ():
            parts.extend(pair)
        return "\n".join(part for part in parts if isinstance(part, str) and part)
    content = spec.tags["content_tag"]
    parts = [message.get(content) for message in row.get(columns["messages"]) or ()]
    if spec.ranking and "chosen" in columns and isinstance(row.get(columns["chosen"]), dict):
        parts.append(row[columns["chosen"]].get(content))
    if "system" in columns:
        parts.append(row.get(columns["system"]))
    return "\n".join(part for part in parts if isinstance(part, str) and part)


def _rows(paths: list[Path], spec: Spec) -> Iterator[str]:
    from wrapper.datasets.check import iter_rows

    ok = rule_set(spec).ok
    for path in paths:
        for value in iter_rows(path):
            if ok(value):  # bad rows are reported by the row check
                yield _texts(value, spec)


def token_lengths(paths: list[Path], spec: Spec, tokenizer: Path, *, cutoff_len: int) -> LengthReport | None:
    """Token counts of every good row; None when the `tokenizers` package is not installed."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    encoder = Tokenizer.from_file(str(tokenizer))
    encoder.no_truncation()
    encoder.no_padding()
    lengths: list[int] = []
    batch: list[str] = []
    for text in _rows(paths, spec):
        batch.append(text)
        if len(batch) >= BATCH:
            lengths += [len(item.ids) for item in encoder.encode_batch(batch, add_special_tokens=False)]
            batch = []
    if batch:
        lengths += [len(item.ids) for item in encoder.encode_batch(batch, add_special_tokens=False)]
    report = LengthReport(rows=len(lengths), cutoff_len=cutoff_len)
    if lengths:
        ordered = sorted(lengths)
        report.over = sum(1 for length in lengths if length > cutoff_len)
        for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            report.percentiles[name] = ordered[min(len(ordered) - 1, int(share * len(ordered)))]
        report.percentiles["max"] = ordered[-1]
    return report


def pt_row_tokens(paths: list[Path], spec: Spec, tokenizer: Path | None) -> tuple[list[int], bool]:
    """Tokens of each pre-training row (text + one eos), as LLaMA-Factory packs them: (counts, exact).
    Without a local tokenizer (or the `tokenizers` package), an upper bound: UTF-8 bytes + 1, as no
    tokenizer yields more tokens than bytes (byte-level BPE and SentencePiece's byte fallback stop at one)."""
    encoder = None
    if tokenizer is not None:
        try:
            from tokenizers import Tokenizer

            encoder = Tokenizer.from_file(str(tokenizer))
            encoder.no_truncation()
        except ImportError:
            encoder = None
    if encoder is None:
        return [len(text.encode("utf-8")) + 1 for text in _rows(paths, spec)], False
    counts: list[int] = []
    for text in _rows(paths, spec):
        counts.append(len(encoder.encode(text, add_special_tokens=False).ids) + 1)
    return counts, True


def packed_blocks(counts: list[int], block: int, workers: int, batch_size: int) -> int:
    """Blocks LLaMA-Factory's packing keeps: datasets.map splits the rows into `workers` contiguous shards
    (no more than rows), each in batches of `batch_size`; every batch packs on its own, its tail dropped."""
    rows = len(counts)
    shards = max(1, min(workers, rows))
    size, extra = divmod(rows, shards)
    blocks, start = 0, 0
    for index in range(shards):
        end = start + size + (1 if index < extra else 0)
        for first in range(start, end, batch_size):
            blocks += sum(counts[first : min(end, first + batch_size)]) // block
        start = end
    return blocks
