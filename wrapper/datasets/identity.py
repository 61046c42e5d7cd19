"""The identity dataset: self-introduction Q&A with {{name}} and {{author}} placeholders.

Placeholders are filled in the parsed rows and the rows are written back with json.dumps, so a
quote, backslash or newline in a name is escaped like any other character: it can neither break
the JSON nor add a field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from wrapper import home
from wrapper.datasets.registry import RegistryEntry, register, registry_lock, write_owned
from wrapper.errors import DatasetError, UsageError

PLACEHOLDER = re.compile(r"\{\{(name|author)\}\}")
MAX_LENGTH = 200


def _load_bundled() -> list[dict[str, Any]]:
    path = home.bundled_datasets_dir() / "identity.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        message = f"The bundled identity set {path} is unreadable ({exc}); reinstall lfwrap."
        raise DatasetError(message) from None
    return rows


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], value)  # one pass: no re-expansion
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    return value


def fill_identity(name: str, author: str) -> list[dict[str, Any]]:
    """The bundled identity rows with {{name}} and {{author}} replaced."""
    for label, value in (("--name", name), ("--author", author)):
        if not value.strip():
            raise UsageError(f"{label} is empty; give the assistant's {label[2:]}, e.g. {label} 神奇海螺.")
        if len(value) > MAX_LENGTH:
            raise UsageError(f"{label} is {len(value)} characters long; keep it under {MAX_LENGTH}.")
    return [_fill(row, {"name": name, "author": author}) for row in _load_bundled()]


def write_identity(name: str, author: str) -> Path:
    """Write the filled set to $LFWRAP_HOME/datasets/identity.json and register it as `identity`."""
    rows = fill_identity(name, author)
    path = home.user_datasets_dir() / "identity.json"
    entry = RegistryEntry(
        file=path.name,
        formatting="alpaca",
        description=f"Identity set filled with name {json.dumps(name, ensure_ascii=False)} and author "
        f"{json.dumps(author, ensure_ascii=False)}.",
        rows=len(rows),
    )
    with registry_lock():
        write_owned(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        register("identity", entry)
    return path
