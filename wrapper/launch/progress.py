"""Reading a run's progress and its errors from the files LLaMA-Factory writes.

Progress comes from `output_dir/trainer_log.jsonl`, one JSON object per logging step
(current_steps, total_steps, loss, percentage, elapsed_time, remaining_time; eval_loss on the steps
where a run with val_size / eval_dataset evaluated); `TrainerLog` reads it incrementally as it grows
and keeps the loss history. `error_lines` picks the lines worth showing from a failed run's log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::\s*.*)?$"
)


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    loss: float | None = None  # the last loss reported
    percentage: float = 0.0
    elapsed: str = ""
    remaining: str = ""
    eval_loss: float | None = None  # the last eval loss reported
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of every logged step
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss)


class TrainerLog:
    """Incremental reader of trainer_log.jsonl: `poll()` returns the progress after new lines."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""
        self.progress = Progress()

    def poll(self) -> Progress:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.progress
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            if line.strip():
                self._apply(line)
        return self.progress

    def _apply(self, line: bytes) -> None:
        try:
            row = json.loads(line)
        except ValueError:
            return
        if not isinstance(row, dict):
            return
        progress = self.progress
        progress.step = int(row.get("current_steps", progress.step))
        progress.total = int(row.get("total_steps", progress.total))
        if isinstance(row.get("loss"), (int, float)):
            progress.loss = float(row["loss"])
            progress.losses.append((progress.step, progress.loss))
        if isinstance(row.get("eval_loss"), (int, float)):
            progress.eval_loss = float(row["eval_loss"])
            progress.eval_losses.append((progress.step, progress.eval_loss))
        progress.percentage = float(row.get("percentage", progress.percentage))
        progress.elapsed = str(row.get("elapsed_time", progress.elapsed))
        progress.remaining = str(row.get("remaining_time", progress.remaining))


def read_progress(path: Path) -> Progress:
    """The latest progress recorded in a trainer_log.jsonl (empty Progress if there is none)."""
    return TrainerLog(path).poll()


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line chart of `values` (resampled to at most `width` points), low to high as ▁ to █."""
    if not values:
        return ""
    if len(values) > width:  # the mean of each of `width` equal slices
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def error_lines(log_text: str, limit: int = 3) -> list[str]:
    """The lines that say why a run failed: the last exception line(s) of the log, not the traceback."""
    lines = [line.rstrip() for line in log_text.splitlines()]
    found = [line.strip() for line in lines if EXCEPTION_LINE.match(line.strip())]
    if found:
        unique: list[str] = []
        for line in reversed(found):
            if line not in unique:
                unique.append(line)
            if len(unique) == limit:
                break
        return list(reversed(unique))
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-limit:]
