"""LLaMA-Factory's dataset_info.json, read strictly.

LLaMA-Factory reads each entry with dict.get and silently ignores any key it does not know, so a
typo such as "format" for "formatting" trains on the wrong columns or fails much later with a
KeyError. Here every entry goes through a pydantic model with extra keys forbidden, and every
problem is reported with file:line and a "did you mean".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from wrapper.datasets.jsonpos import key_lines, line_of
from wrapper.errors import DatasetError, Problem
from wrapper.suggest import did_you_mean

# An entry name is a `dataset:` list item and the run's copy is data/<name>/: a plain file name, no '..'.
# Letters and digits of any script (a name such as 客服问答 is fine), '_', '-' and '.'.
ENTRY_NAME = re.compile(r"^[^\W_][\w.-]{0,127}$")
FORMATTINGS = ("alpaca", "sharegpt", "openai")
SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


class Columns(BaseModel):
    """Which field of a row holds what (LLaMA-Factory's DatasetAttr column names)."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr | None = None
    query: StrictStr | None = None
    response: StrictStr | None = None
    history: StrictStr | None = None
    messages: StrictStr | None = None
    system: StrictStr | None = None
    tools: StrictStr | None = None
    images: StrictStr | None = None
    videos: StrictStr | None = None
    audios: StrictStr | None = None
    chosen: StrictStr | None = None
    rejected: StrictStr | None = None
    kto_tag: StrictStr | None = None


class Tags(BaseModel):
    """How roles are spelled inside sharegpt / openai messages."""

    model_config = ConfigDict(extra="forbid")

    role_tag: StrictStr | None = None
    content_tag: StrictStr | None = None
    user_tag: StrictStr | None = None
    assistant_tag: StrictStr | None = None
    observation_tag: StrictStr | None = None
    function_tag: StrictStr | None = None
    system_tag: StrictStr | None = None


class DatasetEntry(BaseModel):
    """One entry of dataset_info.json."""

    model_config = ConfigDict(extra="forbid")

    file_name: StrictStr | None = None
    hf_hub_url: StrictStr | None = None
    ms_hub_url: StrictStr | None = None
    om_hub_url: StrictStr | None = None
    script_url: StrictStr | None = None
    cloud_file_name: StrictStr | None = None
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: StrictBool = False
    subset: StrictStr | None = None
    split: StrictStr = "train"
    folder: StrictStr | None = None
    num_samples: StrictInt | None = None
    columns: Columns | None = None
    tags: Tags | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetEntry:
        if not any(getattr(self, key) for key in SOURCE_KEYS):
            raise ValueError("needs a source: one of " + ", ".join(SOURCE_KEYS))
        return self


COLUMN_NAMES = tuple(Columns.model_fields)
TAG_NAMES = tuple(Tags.model_fields)
ENTRY_KEYS = tuple(DatasetEntry.model_fields)


def _allowed_for(loc: tuple[str, ...]) -> tuple[str, ...]:
    if len(loc) >= 2 and loc[-2] == "columns":
        return COLUMN_NAMES
    if len(loc) >= 2 and loc[-2] == "tags":
        return TAG_NAMES
    return ENTRY_KEYS


def _describe(error: dict[str, Any], name: str) -> str:
    loc = tuple(str(part) for part in error["loc"])
    where = f"dataset '{name}'" + (f", key '{'.'.join(loc)}'" if loc else "")
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1]
        section = f" in '{loc[-2]}'" if len(loc) >= 2 else ""
        return f"dataset '{name}': unknown key '{key}'{section}{did_you_mean(key, _allowed_for(loc))}"
    if kind == "literal_error" and loc == ("formatting",):
        value = error.get("input")
        return f"{where}: '{value}' is not a formatting; use one of {', '.join(FORMATTINGS)}" + did_you_mean(
            str(value), FORMATTINGS
        )
    if kind in ("bool_type", "int_type", "string_type", "model_type", "dict_type"):
        expected = {
            "bool_type": "true or false",
            "int_type": "an integer",
            "string_type": "a string",
            "model_type": "an object",
            "dict_type": "an object",
        }[kind]
        return f"{where}: expected {expected}, got {json.dumps(error.get('input'), ensure_ascii=False)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def check_entries(data: Any, *, text: str | None = None, file: str = "dataset_info.json") -> list[Problem]:
    """Every problem of a parsed dataset_info.json (empty when it is valid)."""
    lines = key_lines(text) if text is not None else {}
    if not isinstance(data, dict):
        return [Problem("dataset_info.json must be a JSON object mapping dataset names to entries", file, 1)]
    problems: list[Problem] = []
    for name, entry in data.items():
        if not ENTRY_NAME.match(name) or ".." in name:
            message = (
                f"dataset name {json.dumps(name, ensure_ascii=False)} is not allowed; use letters, digits, "
                "'_', '-' or '.' (at most 128, starting with a letter or digit, no '..' or '/'), e.g. my_qa"
            )
            problems.append(Problem(message, file, line_of(lines, name)))
            continue
        if not isinstance(entry, dict):
            message = f"dataset '{name}': the entry must be an object"
            problems.append(Problem(message, file, line_of(lines, name)))
            continue
        try:
            DatasetEntry.model_validate(entry)
        except ValidationError as exc:
            found = []
            for error in exc.errors():
                loc = tuple(str(part) for part in error["loc"])
                message = _describe(dict(error), name)
                # LLaMA-Factory ignores keys it does not know: a near-miss of a real key (a typo) is an
                # error, any other key (a note of your own) only a warning, so what it accepts validates.
                severity = "error"
                if error["type"] == "extra_forbidden" and not did_you_mean(loc[-1], _allowed_for(loc)):
                    severity = "warning"
                    message += " (LLaMA-Factory ignores it)"
                found.append(Problem(message, file, line_of(lines, name, *loc), severity))
            problems.extend(sorted(found, key=lambda problem: problem.line or 0))
    return problems


def read_dataset_info(path: Path) -> dict[str, dict]:
    """Read and validate a dataset_info.json; raises DatasetError listing every problem."""
    return read_dataset_info_checked(path)[0]


def read_dataset_info_checked(path: Path) -> tuple[dict[str, dict], list[Problem]]:
    """read_dataset_info plus the warnings of its entries (keys LLaMA-Factory ignores)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror}; check the path.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = Problem(f"not valid JSON: {exc.msg} (column {exc.colno})", str(path), exc.lineno)
        message = f"{path} is not valid JSON (line {exc.lineno}); fix the syntax."
        raise DatasetError(message, [problem]) from None
    problems = check_entries(data, text=text, file=str(path))
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise DatasetError(
            f"{path} has {len(errors)} problem(s); fix the keys listed below "
            "(LLaMA-Factory would silently ignore them).",
            problems,
        )
    return data, problems
