"""Uploaded training files: saved with a size limit and a sha256, checked row by row at upload.

    obj = save_upload(store, settings, chunks, filename="train.jsonl", purpose="fine-tune")

The upload is kept as sent (served back by /content) and converted to a LLaMA-Factory-ready JSONL
next to it. Row problems (bad JSON, OpenAI's row shape, LLaMA-Factory's turn rules) do not refuse the
upload, as OpenAI's API does not: they are kept, shown in the file's status_details, and a job using
the file fails with an error naming the first bad row.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from wrapper.errors import FineTuneError
from wrapper.finetune import objects
from wrapper.finetune.rows import TAGS, Kind, convert, describe_error, kind_of
from wrapper.finetune.settings import FineTuningSettings
from wrapper.finetune.store import Store

PURPOSES = ("fine-tune",)
RESULTS_PURPOSE = "fine-tune-results"
RESULT_COLUMNS = ("step", "train_loss", "valid_loss")
MAX_PROBLEMS = 20
CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^\w.\- ]+")


def check_rows(
    path: Path, *, ranking: bool, tools: bool
) -> tuple[int, int, list[tuple[int, str | None, str]]]:
    """The project's dataset row checker on a converted file: (rows, bad rows, [(row, field, message)]).

    The one place this package calls wrapper.datasets, so a change of its API is a change here."""
    from wrapper.datasets.check import check_file

    columns = {"messages": "messages", **({"tools": "tools"} if tools else {})}
    report = check_file(
        path, formatting="sharegpt", ranking=ranking, columns=columns, tags=TAGS, max_errors=MAX_PROBLEMS
    )
    return report.rows, report.bad_rows, [(p.row, p.field, p.message) for p in report.problems]


def _chunks(source: IO[bytes] | Iterable[bytes]) -> Iterable[bytes]:
    if hasattr(source, "read"):
        while chunk := source.read(CHUNK):
            yield chunk
    else:
        yield from source


def _write_limited(source: IO[bytes] | Iterable[bytes], target: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("xb") as out:
            for chunk in _chunks(source):
                size += len(chunk)
                if size > limit:
                    raise FineTuneError(
                        f"The file is larger than the limit of {limit} bytes (fine_tuning.files_max_bytes); "
                        "upload a smaller file or raise the limit.",
                        code="file_too_large",
                        param="file",
                        status=413,
                    )
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _convert_file(source: Path, target: Path) -> dict[str, Any]:
    """Convert every row; the file's kind, rows, bad rows and the first problems (row, line, field)."""
    kind: Kind | None = None
    problems: list[dict[str, Any]] = []
    rows = bad = 0
    tools = False
    lines: list[tuple[int, int]] = []  # (row, line) of each converted row, to place a checker finding

    def problem(row: int, line: int, field: str | None, message: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append({"row": row, "line": line, "field": field, "message": message})

    with source.open("rb") as handle, target.open("wb") as out:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                bad += 1
                problem(rows, line_number, None, f"not valid JSON: {str(exc).split(':')[0]}")
                continue
            row_kind = kind_of(value)
            if row_kind is None:
                bad += 1
                problem(
                    rows,
                    line_number,
                    None,
                    "expected an object with 'messages' (chat) or 'input', 'preferred_output' and "
                    "'non_preferred_output' (preference)",
                )
                continue
            kind = kind or row_kind
            if row_kind != kind:
                bad += 1
                problem(rows, line_number, None, f"a {row_kind} row in a file of {kind} rows")
                continue
            try:
                converted = convert(value, kind)
            except ValidationError as exc:
                bad += 1
                for field, message in describe_error(exc):
                    problem(rows, line_number, field, message)
                continue
            tools = tools or "tools" in converted
            out.write(orjson.dumps(converted) + b"\n")
            lines.append((rows, line_number))
    return {"kind": kind, "rows": rows, "bad_rows": bad, "problems": problems, "lines": lines, "tools": tools}


def save_upload(
    store: Store,
    settings: FineTuningSettings,
    source: IO[bytes] | Iterable[bytes],
    *,
    filename: str,
    purpose: str,
) -> dict[str, Any]:
    """Store an uploaded file (stream of bytes) and return its file object."""
    if purpose not in PURPOSES:
        raise FineTuneError(
            f"purpose {purpose!r} is not supported here; upload training data with purpose 'fine-tune'.",
            code="invalid_purpose",
            param="purpose",
        )
    name = _UNSAFE.sub("_", os.path.basename(filename or "")).strip() or "upload.jsonl"
    file_id = objects.new_id("file")
    store.files_dir.mkdir(parents=True, exist_ok=True)
    path = store.files_dir / f"{file_id}.jsonl"
    size, sha256 = _write_limited(source, path, settings.files_max_bytes)
    converted = store.files_dir / f"{file_id}.llamafactory.jsonl"
    try:
        info = _convert_file(path, converted)
        if info["lines"]:
            _check_structure(converted, info)
        if info["rows"] == 0:
            info["bad_rows"] = 0
            info["problems"] = [{"row": 0, "line": 0, "field": None, "message": "the file holds no rows"}]
    except BaseException:
        path.unlink(missing_ok=True)
        converted.unlink(missing_ok=True)
        raise
    info.pop("lines")
    obj = objects.file_object(
        file_id, filename=name[:255], size=size, purpose=purpose, created_at=objects.now()
    )
    if info["problems"]:
        obj["status"] = "error"
        obj["status_details"] = problem_text(info)
    info["converted"] = str(converted)
    store.add_file(obj, sha256=sha256, path=path, info=info)
    return obj


def _check_structure(converted: Path, info: dict[str, Any]) -> None:
    rows, bad, found = check_rows(converted, ranking=info["kind"] == "preference", tools=info["tools"])
    info["bad_rows"] += bad
    lines = info["lines"]
    for row, field, message in found:
        upload_row, line = lines[row - 1] if 0 < row <= len(lines) else (row, 0)
        info["problems"].append({"row": upload_row, "line": line, "field": field, "message": message})
    info["problems"] = sorted(info["problems"], key=lambda p: p["row"])[:MAX_PROBLEMS]


def problem_text(info: dict[str, Any]) -> str:
    """One sentence about a file's row problems, naming the first one."""
    problems = info["problems"]
    first = problems[0]
    if first["row"] == 0:
        return f"The file is not usable: {first['message']}."
    where = f"row {first['row']} (line {first['line']})"
    what = f"'{first['field']}' {first['message']}" if first["field"] else first["message"]
    more = f" ({info['bad_rows']} of {info['rows']} rows are malformed)" if info["bad_rows"] > 1 else ""
    return f"The file's {where} is malformed: {what}{more}."


def save_results(store: Store, job_id: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """A finished job's step metrics as a CSV file object (purpose fine-tune-results), as OpenAI's
    result_files are; its content is served like any file's."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in metrics:
        writer.writerow(["" if row.get(key) is None else row[key] for key in RESULT_COLUMNS])
    data = text.getvalue().encode()
    file_id = objects.new_id("file")
    store.files_dir.mkdir(parents=True, exist_ok=True)
    path = store.files_dir / f"{file_id}.csv"
    path.write_bytes(data)
    obj = objects.file_object(
        file_id,
        filename=f"{job_id}-step_metrics.csv",
        size=len(data),
        purpose=RESULTS_PURPOSE,
        created_at=objects.now(),
    )
    store.add_file(
        obj, sha256=hashlib.sha256(data).hexdigest(), path=path, info={"kind": None, "problems": []}
    )
    return obj


def file_info(store: Store, file_id: str, param: str = "file_id") -> tuple[dict[str, Any], dict[str, Any]]:
    """(file object, stored info) of a live file; FineTuneError 404 when there is none."""
    row = store.file_row(file_id)
    if row is None:
        raise FineTuneError(f"No file with id {file_id!r}.", code="file_not_found", param=param, status=404)
    obj, _, path, info = row
    return obj, {**info, "path": str(path)}


def content_path(store: Store, file_id: str) -> Path:
    """The bytes as uploaded, for GET /v1/files/{id}/content."""
    _, info = file_info(store, file_id)
    return Path(info["path"])


def delete_file(store: Store, file_id: str) -> dict[str, Any]:
    _, info = file_info(store, file_id)
    store.delete_file(file_id)
    # the converted copy stays while a job may still need it; the run folder holds its own copy anyway
    Path(info["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
