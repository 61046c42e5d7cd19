"""LLaMA-Factory's config schema, read from the snapshot shipped in wrapper/schema_data/.

The snapshot is plain JSON written by `python -m wrapper.schema_extract` (which needs llamafactory);
reading it here needs nothing but the standard library, so validation starts instantly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from wrapper.errors import UsageError
from wrapper.suggest import PAREN_CODE, closest, did_you_mean

SCHEMA_VERSION = "0.9.5"
SCHEMA_DIR = Path(__file__).resolve().parent / "schema_data"

TYPES = ("str", "int", "float", "bool", "dict", "list", "any")
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "dict": "a mapping",
    "list": "a list",
    "any": "a value",
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "~"}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    group: str  # the llamafactory.hparams dataclass: ModelArguments, DataArguments, ...
    type: str  # one of TYPES
    nullable: bool
    default: Any
    choices: list | None
    help: str

    def describe(self) -> str:
        """The expected type in words, e.g. 'an integer or null'."""
        words = _TYPE_WORDS[self.type]
        return f"{words} or null" if self.nullable else words

    def check(self, value: Any) -> str | None:
        """Why `value` (as parsed from YAML) does not fit this field, or None when it does."""
        if value is None:
            return None if self.nullable else f"`{self.name}` must be {self.describe()}, not null"
        if not _fits(self.type, value):
            return f"`{self.name}` must be {self.describe()}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            hint = did_you_mean(str(value), [str(c) for c in self.choices], PAREN_CODE)
            allowed = ", ".join(str(c) for c in self.choices)
            return f"`{self.name}` must be one of {allowed}; got {value!r}{hint}"
        return None


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    return True


def _sentence(message: str) -> str:
    return message if message.endswith((".", "?", "!")) else message + "."


@dataclass(frozen=True, eq=False)  # hashed by identity: load_schema() returns one per version
class Schema:
    version: str
    fields: dict[str, FieldSpec]
    templates: list[str]
    model_templates: dict[str, str]  # hub id or LLaMA-Factory model name -> default chat template
    model_names: dict[str, str] = dataclasses.field(default_factory=dict)  # hub id -> LLaMA Board's name

    def field(self, name: str) -> FieldSpec | None:
        return self.fields.get(name)

    def suggest(self, name: str) -> str | None:
        """The closest known key to a misspelled one, or None."""
        return closest(name, self.fields)

    def suggest_template(self, name: str) -> str | None:
        return closest(name, self.templates)

    def unknown_key_message(self, name: str) -> str:
        guess = self.suggest(name)
        hint = f"; did you mean `{guess}`?" if guess else ""
        return f"unknown key `{name}` (not an argument of LLaMA-Factory {self.version}){hint}"

    def coerce(self, name: str, raw: str) -> Any:
        """Type a `--set key=value` string by the schema: int, float, bool, null, comma lists, JSON."""
        spec = self.fields.get(name)
        if spec is None:
            raise UsageError(_sentence(f"--set {name}={raw}: {self.unknown_key_message(name)}"))
        text = raw.strip()
        if text.lower() in _NULL and (spec.nullable or spec.type != "str"):
            if not spec.nullable:
                raise UsageError(f"--set {name}={raw}: `{name}` must be {spec.describe()}, not null.")
            return None
        try:
            value = _coerce_kind(spec.type, text)
        except ValueError:
            raise UsageError(
                f"--set {name}={raw}: `{name}` expects {spec.describe()}, and {raw!r} is not one."
            ) from None
        problem = spec.check(value)
        if problem:
            raise UsageError(_sentence(f"--set {name}={raw}: {problem}"))
        return value

    def default_template(self, model_name_or_path: str) -> str | None:
        """The chat template LLaMA-Factory registers for a model, by hub id, model name or folder name."""
        exact = self.model_templates.get(model_name_or_path.strip())
        if exact:
            return exact
        base = model_name_or_path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()
        return _by_basename(self)[base] if base in _by_basename(self) else None


@cache
def _by_basename(schema: Schema) -> dict[str, str]:
    index: dict[str, str] = {}
    for key in sorted(schema.model_templates):
        index.setdefault(key.rsplit("/", 1)[-1].lower(), schema.model_templates[key])
    return index


def _coerce_kind(kind: str, text: str) -> Any:
    if kind == "str":
        return text
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(text)
    if kind == "int":
        return int(text)
    if kind == "float":
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(text)
        return number
    if kind == "list":
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise ValueError(text)
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "dict":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(text) from None
        if not isinstance(parsed, dict):
            raise ValueError(text)
        return parsed
    return _coerce_any(text)


def _coerce_any(text: str) -> Any:
    """A field LLaMA-Factory types loosely (e.g. `dict | str`): the most specific reading wins."""
    lowered = text.lower()
    if lowered in _NULL:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _spec(name: str, raw: dict[str, Any]) -> FieldSpec:
    return FieldSpec(
        name=name,
        group=raw["group"],
        type=raw["type"],
        nullable=raw["nullable"],
        default=raw["default"],
        choices=raw["choices"],
        help=raw["help"],
    )


def snapshot_path(version: str = SCHEMA_VERSION) -> Path:
    return SCHEMA_DIR / f"llamafactory-{version}.json"


@cache
def load_schema(version: str = SCHEMA_VERSION) -> Schema:
    """The schema of LLaMA-Factory `version` (cached; plain JSON, no LLaMA-Factory import)."""
    path = snapshot_path(version)
    if not path.is_file():
        known = ", ".join(sorted(p.stem.split("-", 1)[1] for p in SCHEMA_DIR.glob("llamafactory-*.json")))
        raise UsageError(f"No LLaMA-Factory schema snapshot for version {version} (have: {known}).")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Schema(
        version=data["llamafactory_version"],
        fields={name: _spec(name, raw) for name, raw in sorted(data["fields"].items())},
        templates=list(data["templates"]),
        model_templates=dict(data["model_templates"]),
        model_names=dict(data.get("model_names", {})),
    )
