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

from wrapper.datasets.rows import RowCheck, Spec, describe, make_spec, rule_set
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


def _cut_short(exc: json.JSONDecodeError, buffer: str) -> bool:
    """Whether a decode error may only mean the element continues in the next chunk: the decoder
    stopped at (or a literal/escape's length before) the buffer's end, or inside a string reaching it
    (strict decoding refuses raw newlines, so any other unterminated string would have failed earlier)."""
    return exc.pos >= len(buffer) - 8 or exc.msg.startswith("Unterminated string")


def _cut_point(buffer: str, pos: int, at_line_start: bool) -> tuple[int, bool]:
    """Where to cut consumed text off the buffer, and whether the rest then starts a line: the start
    of `pos`'s line when it is near, so a row that fails to decode still shows its indentation."""
    newline = buffer.rfind("\n", max(0, pos - 256), pos)
    if newline >= 0:
        return newline + 1, True
    if pos <= 256:
        return 0, at_line_start
    return pos, False


def _array_rows(path: Path, report: CheckReport) -> Rows:
    """Elements of a top-level JSON array, decoded one at a time from 1 MiB chunks.

    A row that is not valid JSON is reported and checking goes on at the next row when the file is
    laid out one row per line start (pretty-printed or one row per line): the next line that opens an
    object at the same indentation after a line ending in ','. Otherwise checking stops there.
    """
    decode = json.JSONDecoder().raw_decode
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with path.open("rb") as handle:
        buffer = ""
        pos = 0
        line = 1  # line number at `pos`
        eof = False
        line_start = True  # whether buffer[0] starts a line of the file

        def refill() -> bool:
            nonlocal buffer, pos, eof, line_start
            if eof:
                return False
            chunk = handle.read(CHUNK)
            eof = not chunk
            try:
                text = decoder.decode(chunk, final=eof)
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from None
            keep, line_start = _cut_point(buffer, pos, line_start)
            buffer = buffer[keep:] + text
            pos -= keep
            return True

        def skip_space() -> None:
            nonlocal pos, line
            while True:
                end = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                line += buffer.count("\n", pos, end)
                pos = end
                if pos < len(buffer) or not refill():
                    return

        def resync() -> int | None:
            """Position of the next row at this row's indentation, or None (not laid out by lines, or
            nothing found within a few MiB)."""
            start = buffer.rfind("\n", 0, pos) + 1
            indent = buffer[start:pos]
            if (start == 0 and not line_start) or indent.strip(" \t"):
                return None
            follow = re.compile(r",[ \t\r]*\n" + re.escape(indent) + r"(?=\{)")
            searched = pos + 1
            while True:
                found = follow.search(buffer, searched)
                if found:
                    return found.end()
                if len(buffer) - pos > max(4 * CHUNK, 1 << 22):
                    return None
                searched = max(pos + 1, len(buffer) - len(indent) - 64)
                before = pos
                if not refill():
                    return None
                searched -= before - pos

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
            missing_comma = False
            if not first:
                if buffer[pos : pos + 1] == ",":
                    pos += 1
                    skip_space()
                elif buffer[pos : pos + 1] == "{":
                    missing_comma = True  # `}` then `{` on the next line: read the row, report the comma
                else:
                    report.fatal = f"line {line}: expected ',' or ']' after row {rows_seen}"
                    return
            first = False
            while True:
                try:
                    value, end = decode(buffer, pos)
                except json.JSONDecodeError as exc:
                    if _cut_short(exc, buffer) and refill():
                        continue
                    error_line = line + exc.lineno - 1 - buffer.count("\n", 0, pos)
                    resume = resync()
                    if resume is None:
                        report.fatal = f"line {error_line}: not valid JSON after row {rows_seen}: {exc.msg}"
                        return
                    rows_seen += 1
                    yield (
                        None,
                        line,
                        f"not valid JSON (line {error_line}: {exc.msg}); checked on from the next row",
                    )
                    line += buffer.count("\n", pos, resume)
                    pos = resume
                    missing_comma = False
                    continue
                if end >= len(buffer) and refill():  # a number or literal may continue in the next chunk
                    continue
                break
            yield value, line, "missing ',' between this row and the one before" if missing_comma else None
            rows_seen += 1
            line += buffer.count("\n", pos, end)
            pos = end
            if pos > CHUNK:  # drop what was consumed
                keep, line_start = _cut_point(buffer, pos, line_start)
                buffer = buffer[keep:]
                pos -= keep


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
    spec: Spec | None = None,
) -> CheckReport:
    """Check every row of a JSON / JSONL data file; never loads the whole file.

    `spec` (wrapper.datasets.rows.Spec) says everything about the rows; without it, one is made from
    `formatting`, `ranking`, `columns` and `tags`.
    """
    if not path.is_file():
        raise DatasetError(f"Data file {path} does not exist; check the path.")
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise DatasetError(f"{path} is not a .json or .jsonl file; lfwrap checks JSON and JSON Lines data.")
    spec = spec or make_spec(formatting, ranking=ranking, columns=columns, tags=tags)
    report = CheckReport(path=path, formatting=spec.kind)
    row_check = check or rule_set(spec).check
    rows = _jsonl_rows(path) if _is_jsonl(path) else _array_rows(path, report)
    _run(rows, row_check, report, max_errors)
    return report


def iter_rows(path: Path) -> Iterator[Any]:
    """Every row of a JSON / JSONL file that decodes, streamed."""
    report = CheckReport(path=path, formatting="")
    rows = _jsonl_rows(path) if _is_jsonl(path) else _array_rows(path, report)
    for value, _line, error in rows:
        if error is None:
            yield value


def head_rows(path: Path, count: int) -> list[Any]:
    """The first `count` rows of a JSON / JSONL file that decode (for format detection)."""
    report = CheckReport(path=path, formatting="")
    rows = _jsonl_rows(path) if _is_jsonl(path) else _array_rows(path, report)
    found: list[Any] = []
    for value, _line, error in rows:
        if error is None:
            found.append(value)
        if len(found) >= count:
            break
    return found


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
