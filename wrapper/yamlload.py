"""Safe YAML loading through libyaml when PyYAML was built with it.

The C parser builds the same objects as yaml.SafeLoader (same constructor and resolver) about ten times
faster, which matters on paths that run before every launch (rendering, registries, run configs).
"""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)
