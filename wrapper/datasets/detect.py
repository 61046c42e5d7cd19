"""Tell a data file's format from its first rows: alpaca, sharegpt, openai, their ranking / kto variants,
or pt (pre-training text), the way LLaMA-Factory's own demo files are laid out.

    spec, assumed = detect_spec(path)   # assumed: "sharegpt + ranking (messages=conversations, ...)"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wrapper.datasets.check import head_rows
from wrapper.datasets.rows import Spec, make_spec
from wrapper.errors import DatasetError

HEAD_ROWS = 20
KTO_COLUMNS = ("kto_tag", "label")
TEXT_COLUMNS = ("text", "content", "raw_content")


def _describe(spec: Spec, columns: dict[str, str], tags: dict[str, str]) -> str:
    named = [f"{key}={value}" for key, value in {**columns, **tags}.items()]
    return spec.kind + (f" ({', '.join(named)})" if named else "")


def spec_from_rows(rows: list[Any]) -> tuple[Spec, str] | None:
    """The Spec the rows look like and a description of what was assumed, or None when nothing fits."""
    dicts = [row for row in rows if isinstance(row, dict)]
    keys: set[str] = set().union(*(row.keys() for row in dicts)) if dicts else set()
    columns: dict[str, str] = {}
    tags: dict[str, str] = {}
    kto = next(
        (
            key
            for key in KTO_COLUMNS
            if key in keys and all(isinstance(r.get(key), bool) for r in dicts if key in r)
        ),
        None,
    )
    if kto:
        columns["kto_tag"] = kto
    ranking = "chosen" in keys and "rejected" in keys
    messages = next((key for key in ("conversations", "messages") if key in keys), None)
    if messages:
        first = next(
            (
                turns[0]
                for row in dicts
                if isinstance(turns := row.get(messages), list) and turns and isinstance(turns[0], dict)
            ),
            {},
        )
        formatting = "sharegpt" if "from" in first or "value" in first else "openai"
        if formatting == "openai" and kto:
            # LLaMA-Factory's kto demo: sharegpt formatting with role/content tags
            formatting = "sharegpt"
            tags.update(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant")
        if messages != ("conversations" if formatting == "sharegpt" else "messages"):
            columns["messages"] = messages
        spec = make_spec(formatting, ranking=ranking, columns=columns, tags=tags)
        return spec, _describe(spec, columns, tags)
    if keys & {"instruction", "input", "output"} or ranking:
        spec = make_spec("alpaca", ranking=ranking, columns=columns)
        return spec, _describe(spec, columns, tags)
    text = next((key for key in TEXT_COLUMNS if key in keys), None)
    if text:
        columns["prompt"] = text
        spec = make_spec("alpaca", pt=True, columns=columns)
        return spec, _describe(spec, columns, tags)
    return None


def detect_spec(path: Path) -> tuple[Spec, str]:
    """Spec of a JSON / JSONL file from its first rows; DatasetError when no format fits."""
    if not path.is_file():
        raise DatasetError(f"Data file {path} does not exist; check the path.")
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise DatasetError(f"{path} is not a .json or .jsonl file; lfwrap checks JSON and JSON Lines data.")
    rows = head_rows(path, HEAD_ROWS)
    found = spec_from_rows(rows)
    if found is None:
        keys = sorted({key for row in rows if isinstance(row, dict) for key in row})
        seen = ", ".join(keys[:12]) or "no JSON object rows"
        raise DatasetError(
            f"Cannot tell the format of {path} from its first rows (fields: {seen}); "
            "pass --formatting (and --columns) or check it as a registered dataset with --dataset NAME."
        )
    return found
