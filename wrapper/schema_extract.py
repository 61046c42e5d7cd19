"""Extract LLaMA-Factory's config schema into the JSON snapshot shipped with lfwrap.

Run where llamafactory is installed (the `local` extra):

    $ HF_HUB_OFFLINE=1 python -m wrapper.schema_extract -o wrapper/schema_data/llamafactory-0.9.5.json

The snapshot holds every init field of llamafactory.hparams' ModelArguments, DataArguments,
FinetuningArguments, GeneratingArguments and TrainingArguments (name, group, normalised type,
nullable, default, allowed values, help), the chat template names and the model -> default template
map. The output is deterministic (sorted keys) so a test can regenerate it and diff it field by field.

llamafactory (and so torch) is imported only inside the functions below: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

GROUPS = (
    "ModelArguments",
    "DataArguments",
    "FinetuningArguments",
    "GeneratingArguments",
    "TrainingArguments",
)

# TrainingArguments fields whose default is computed when transformers is imported rather than written as a
# constant, so it differs between installations: `optim` is "adamw_torch_fused" with torch >= 2.8 and
# "adamw_torch" below it (transformers/training_args.py). Their default is stored as a marker so the snapshot
# and the regeneration test do not depend on the machine; the allowed values are still recorded.
MACHINE_DEPENDENT_DEFAULTS: frozenset[str] = frozenset({"optim"})
MACHINE_DEPENDENT_MARKER = "<machine-dependent>"

_PRIMITIVES: dict[type, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    dict: "dict",
    list: "list",
}


def _kind(tp: Any) -> tuple[str, list[Any] | None]:
    """One non-None member of a field's type -> (normalised type, allowed values or None)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        kinds = {_PRIMITIVES.get(type(v), "any") for v in values}
        return (kinds.pop() if len(kinds) == 1 else "any"), values
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "str", [member.value for member in tp]
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return "list", None
    if origin is dict or tp is dict:
        return "dict", None
    if isinstance(tp, type) and issubclass(tp, os.PathLike):
        return "str", None
    if tp in _PRIMITIVES:
        return _PRIMITIVES[tp], None
    return "any", None


def normalise_type(tp: Any) -> tuple[str, bool, list[Any] | None]:
    """A dataclass field's annotation -> (type, nullable, choices).

    `Enum | str` (how transformers types its strategy fields) keeps the Enum's values as the allowed set,
    since the string is converted to the Enum in __post_init__ and anything else is refused there.
    Other unions of different kinds (e.g. `dict | str`, `str | bool`) become "any".
    """
    origin = typing.get_origin(tp)
    members = list(typing.get_args(tp)) if origin in (typing.Union, types.UnionType) else [tp]
    nullable = type(None) in members
    members = [m for m in members if m is not type(None)]
    kinds = [_kind(m) for m in members]
    enums = [
        choices
        for (kind, choices), m in zip(kinds, members, strict=True)
        if isinstance(m, type) and issubclass(m, enum.Enum)
    ]
    if len(kinds) == 1:
        kind, choices = kinds[0]
        return kind, nullable, choices
    if len(enums) == 1 and {k for k, _ in kinds} == {"str"}:
        return "str", nullable, enums[0]
    literal_choices = [c for _, c in kinds if c is not None]
    if len({k for k, _ in kinds}) == 1 and len(literal_choices) == len(kinds):
        return kinds[0][0], nullable, [v for c in literal_choices for v in c]
    if len({k for k, _ in kinds}) == 1 and not literal_choices:
        return kinds[0][0], nullable, None
    return "any", nullable, None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return _jsonable(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _jsonable(field.default_factory())
    return None


def extract_fields() -> dict[str, dict[str, Any]]:
    import llamafactory.hparams as hparams

    fields: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        cls = getattr(hparams, group)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            kind, nullable, choices = normalise_type(hints[field.name])
            default = _default(field)
            if group == "TrainingArguments" and field.name in MACHINE_DEPENDENT_DEFAULTS:
                default = MACHINE_DEPENDENT_MARKER
            fields[field.name] = {
                "group": group,
                "type": kind,
                "nullable": nullable or default is None,
                "default": default,
                "choices": _jsonable(choices) if choices is not None else None,
                "help": " ".join(str(field.metadata.get("help", "")).split()),
            }
    return fields


def extract_templates() -> tuple[list[str], dict[str, str]]:
    from llamafactory.data.template import TEMPLATES
    from llamafactory.extras.constants import DEFAULT_TEMPLATE, SUPPORTED_MODELS

    model_templates: dict[str, str] = {}
    for name, sources in SUPPORTED_MODELS.items():
        template = DEFAULT_TEMPLATE.get(name)
        if not template:
            continue
        model_templates[name] = template  # LLaMA-Factory's display name, as the web UI shows it
        for path in sources.values():
            model_templates[str(path)] = template
    return sorted(TEMPLATES), model_templates


def extract_model_names() -> dict[str, str]:
    """Hub id (every download source) -> the model's name in LLaMA Board's model list, which names its
    save folder saves/<model name>/ (the first name registered for an id, as LLaMA Board lists them)."""
    from llamafactory.extras.constants import SUPPORTED_MODELS

    names: dict[str, str] = {}
    for name, sources in SUPPORTED_MODELS.items():
        for path in sources.values():
            names.setdefault(str(path), name)
    return names


def extract() -> dict[str, Any]:
    import llamafactory

    templates, model_templates = extract_templates()
    return {
        "llamafactory_version": llamafactory.__version__,
        "fields": extract_fields(),
        "templates": templates,
        "model_templates": model_templates,
        "model_names": extract_model_names(),
    }


def dumps(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m wrapper.schema_extract", description=summary)
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text = dumps(extract())
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
