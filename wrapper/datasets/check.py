"""`lfwrap data check`: stream a JSON or JSONL data file and check every row.

JSONL is read line by line (orjson per line). A JSON file holding a top-level array is read in
chunks and decoded element by element (json's C raw_decode), so neither form is ever loaded whole.
Every bad row is counted; the first `max_errors` are kept with row number, line, field and reason.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from wrapper.datasets.rows import RowCheck, describe, row_checker
from wrapper.errors import DatasetError

CHUNK = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class RowProblem:
    row: int
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"row {self.row} (line {self.line})"
        return f"{where}: '{self.field}' {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class CheckReport:
    path: Path
    formatting: str
    rows: int = 0
    bad_rows: int = 0
    turns: int = 0
    chars: int = 0
    max_chars: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    fatal: str | None = None  # the file could not be read to its end
    keys: set[str] = field(default_factory=set)  # every field name seen in a row

    @property
    def ok(self) -> bool:
        return self.bad_rows == 0 and self.fatal is None

    def summary(self) -> str:
        good = self.rows - self.bad_rows
        mean = self.chars / good if good else 0.0
        return (
            f"{self.rows} rows ({self.bad_rows} bad), {self.turns} turns, "
            f"characters per row: mean {mean:.1f}, max {self.max_chars}"
        )


# One decoded row: (row value or a parse error message, line number of its start).
Rows = Iterator[tuple[Any, int, str | None]]


def _jsonl_rows(path: Path) -> Rows:
    loads = orjson.loads
    error = orjson.JSONDecodeError
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                yield loads(line), number, None
            except error as exc:
                if not line.strip():
                    continue
                yield None, number, f"not valid JSON: {str(exc).split(':')[0]}"


def _array_rows(path: Path, report: CheckReport) -> Rows:
    """Elements of a top-level JSON array, decoded one at a time from 1 MiB chunks."""
    decode = json.JSONDecoder().raw_decode
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with path.open("rb") as handle:
        buffer = ""
        pos = 0
        line = 1  # line number at `pos`
        eof = False

        def refill() -> bool:
            nonlocal buffer, pos, eof
            if eof:
                return False
            chunk = handle.read(CHUNK)
            eof = not chunk
            try:
                text = decoder.decode(chunk, final=eof)
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from None
            buffer = buffer[pos:] + text
            pos = 0
            return True

        def skip_space() -> None:
            nonlocal pos, line
            while True:
                end = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                line += buffer.count("\n", pos, end)
                pos = end
                if pos < len(buffer) or not refill():
                    return

        skip_space()
        if buffer[pos : pos + 1] != "[":
            report.fatal = "line 1: expected a JSON array of rows ('[' ...) or JSON Lines"
            return
        pos += 1
        first = True
        rows_seen = 0
        while True:
            skip_space()
            if buffer[pos : pos + 1] == "]":
                return
            if not first:
                if buffer[pos : pos + 1] != ",":
                    report.fatal = f"line {line}: expected ',' or ']' after row {rows_seen}"
                    return
                pos += 1
                skip_space()
            first = False
            while True:
                try:
                    value, end = decode(buffer, pos)
                except json.JSONDecodeError as exc:
                    if refill():
                        continue
                    error_line = line + exc.lineno - 1 - buffer.count("\n", 0, pos)
                    report.fatal = f"line {error_line}: not valid JSON after row {rows_seen}: {exc.msg}"
                    return
                if end >= len(buffer) and refill():  # a number or literal may continue in the next chunk
                    continue
                break
            yield value, line, None
            rows_seen += 1
            line += buffer.count("\n", pos, end)
            pos = end
            if pos > CHUNK:  # drop what was consumed
                buffer = buffer[pos:]
                pos = 0


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return not head.startswith(b"[")


def check_file(
    path: Path,
    *,
    formatting: str = "alpaca",
    ranking: bool = False,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    max_errors: int = 20,
    check: RowCheck | None = None,
) -> CheckReport:
    """Check every row of a JSON / JSONL data file; never loads the whole file."""
    if not path.is_file():
        raise DatasetError(f"Data file {path} does not exist; check the path.")
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise DatasetError(f"{path} is not a .json or .jsonl file; lfwrap checks JSON and JSON Lines data.")
    report = CheckReport(path=path, formatting=formatting)
    row_check = check or row_checker(formatting, ranking=ranking, columns=columns, tags=tags)
    rows = _jsonl_rows(path) if _is_jsonl(path) else _array_rows(path, report)
    _run(rows, row_check, report, max_errors)
    return report


def _run(rows: Rows, row_check: RowCheck, report: CheckReport, max_errors: int) -> None:
    count = bad = turns = chars = max_chars = 0
    problems = report.problems
    keys = report.keys
    add: Callable[[RowProblem], None] = problems.append
    for value, line, parse_error in rows:
        count += 1
        if parse_error is not None:
            result: Any = [(None, parse_error)]
        else:
            result = row_check(value)
        if value.__class__ is dict and not value.keys() <= keys:
            keys.update(value)
        if result.__class__ is tuple:
            row_chars, row_turns = result
            chars += row_chars
            turns += row_turns
            if row_chars > max_chars:
                max_chars = row_chars
            continue
        bad += 1
        if bad <= max_errors:
            for name, message in result or [(None, f"rejected ({describe(value)})")]:
                add(RowProblem(count, line, name, message))
    report.rows, report.bad_rows, report.turns = count, bad, turns
    report.chars, report.max_chars = chars, max_chars


def format_report(report: CheckReport, max_errors: int) -> list[str]:
    """The lines `lfwrap data check` prints: each kept problem, '... and N more', the summary."""
    lines = [str(problem) for problem in report.problems]
    if report.bad_rows > max_errors:
        lines.append(f"... and {report.bad_rows - max_errors} more bad row(s)")
    if report.fatal:
        lines.append(f"stopped: {report.fatal}")
    lines.append(f"{report.path}: {report.formatting}, {report.summary()}")
    return lines
