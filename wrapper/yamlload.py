"""Safe YAML loading through libyaml when PyYAML was built with it.

The C parser builds the same objects as yaml.SafeLoader (same constructor and resolver) about ten times
faster, which matters on paths that run before every launch (rendering, registries, run configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wrapper.errors import ConfigError, LfwrapError

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)


def read_mapping(
    path: Path, what: str, error: type[LfwrapError] = ConfigError, keys: str = ""
) -> dict[str, Any]:
    """The YAML mapping in `path` (empty for an empty file); `error` with one sentence when the file cannot
    be read, is not YAML (with its line) or holds something else than a mapping. `what` names the file in
    messages ("gateway config"), `keys` hints what it holds ("host, port, models ...")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"Cannot read {what} {path}: {exc.strerror}; check the --config path.") from exc
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} must be a YAML mapping" + (f" ({keys})." if keys else "."))
    return data
