"""Render a config template to a LLaMA-Factory YAML that values cannot inject into, then validate it.

A template is a Jinja2 file, templates/NAME.yaml.j2 (bundled) or $LFWRAP_HOME/templates/NAME.yaml.j2
(the user's own: it adds a template or replaces the bundled one of that name). It starts with YAML
comments naming the command that uses it, then declares itself in a Jinja comment holding YAML:

    {# lfwrap
    kind: train                      # train | infer | export | eval
    command: lfwrap train
    description: One line for `lfwrap templates`.
    variables:
      lora_rank: {default: 8, help: "LoRA rank."}
    -#}

Safety: the Jinja environment is sandboxed, undefined names are errors, and every `{{ ... }}` goes
through `yaml_value` (the environment's finalize hook), which emits a value as a one-line YAML flow
scalar: strings always double-quoted with escapes, lists and mappings as flow collections. A value
holding a newline, `: `, `#`, `{`, `&anchor`, `*alias` or `!!python/object` therefore stays one
string: it can add neither a key nor a tag. The text is parsed back with yaml.safe_load and checked
by wrapper.validate against the LLaMA-Factory schema snapshot.

`--set key=value` overrides a template variable (typed by the schema when the variable is a
LLaMA-Factory key, else like its default) or adds/replaces any other key the schema knows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, ValidationError

from wrapper import home
from wrapper.errors import ConfigError, Problem, UsageError
from wrapper.fileio import write_atomic
from wrapper.pydantic_errors import fields_at, loc_text
from wrapper.suggest import PAREN_CODE, did_you_mean
from wrapper.yamlload import safe_load

SUFFIX = ".yaml.j2"
DS_SUFFIX = ".json.j2"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_META = re.compile(r"\{#-?\s*lfwrap[ \t]*\n(.*?)-?#\}", re.DOTALL)


# --------------------------------------------------------------------------- quoting


def _quote(text: str) -> str:
    """A YAML double-quoted scalar for any string: one line, every special character escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in _ESCAPED:
            # control characters, YAML line breaks (NEL, LS, PS), BOM and non-characters
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


_ESCAPED = {0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF}


def _float(number: float) -> str:
    if math.isnan(number):
        return ".nan"
    if math.isinf(number):
        return ".inf" if number > 0 else "-.inf"
    text = repr(number)
    # YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 1e-05 -> 1.0e-05
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        if exponent[0] not in "+-":
            exponent = "+" + exponent
        text = f"{mantissa}e{exponent}"
    return text


def yaml_value(value: Any) -> str:
    """One value as a one-line YAML flow node that safe_load reads back as exactly that value."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError here, naming the variable
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, Path):
        return _quote(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_quote(str(k))}: {yaml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"Cannot write a value of type {type(value).__name__} into a config: {value!r}.")


def _environment(finalize: Any) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, finalize=finalize, keep_trailing_newline=True
    )


# --------------------------------------------------------------------------- template discovery


@dataclass(frozen=True)
class VarSpec:
    default: Any
    help: str


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    path: Path
    kind: str  # "train" | "infer" | "export" | "eval"
    command: str
    description: str
    variables: dict[str, VarSpec] = field(default_factory=dict)


@dataclass
class Rendered:
    template: TemplateInfo
    text: str  # the YAML written to disk or printed
    data: dict[str, Any]  # text parsed back with yaml.safe_load
    problems: list[Problem]  # warnings only (errors raise ConfigError)


class _VarDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: Any = None
    help: str = ""


class _Meta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train", "infer", "export", "eval"]
    command: str
    description: str
    variables: dict[str, _VarDecl] = {}


def _template_files(subdir: str, suffix: str) -> dict[str, Path]:
    """name -> file, the user's templates replacing bundled ones of the same name."""
    found: dict[str, Path] = {}
    for base in (home.bundled_templates_dir(), home.user_templates_dir()):
        folder = base / subdir if subdir else base
        for path in sorted(folder.glob(f"*{suffix}")):
            if path.is_file():
                found[path.name[: -len(suffix)]] = path
    return found


def _meta_problem(path: Path, message: str) -> ConfigError:
    return ConfigError(f"Template {path} has a bad `lfwrap` header: {message}.")


def _read_info(name: str, path: Path) -> TemplateInfo:
    source = path.read_text(encoding="utf-8")
    match = _META.search(source)
    if not match:
        raise _meta_problem(path, "no `{# lfwrap ... -#}` comment declaring kind, command, description")
    try:
        raw = safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise _meta_problem(path, f"not YAML ({str(exc).splitlines()[0]})") from None
    try:
        meta = _Meta.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            where = loc_text(error["loc"])
            if error["type"] == "extra_forbidden":
                allowed = fields_at(_Meta, error["loc"])
                messages.append(
                    f"unknown key `{where}`{did_you_mean(str(error['loc'][-1]), allowed, PAREN_CODE)}"
                )
            else:
                messages.append(f"`{where}`: {error['msg'].lower()}")
        raise _meta_problem(path, "; ".join(messages)) from None
    for var in meta.variables:
        if not _KEY.match(var):
            raise _meta_problem(path, f"variable name `{var}` is not an identifier")
    variables = {var: VarSpec(default=decl.default, help=decl.help) for var, decl in meta.variables.items()}
    return TemplateInfo(name, path, meta.kind, meta.command, meta.description, variables)


def list_templates() -> list[TemplateInfo]:
    """Every config template, bundled and user ones, sorted by name."""
    return [_read_info(name, path) for name, path in sorted(_template_files("", SUFFIX).items())]


def get_template(name: str) -> TemplateInfo:
    files = _template_files("", SUFFIX)
    if name not in files:
        raise UsageError(
            f"Unknown template `{name}`{did_you_mean(name, sorted(files), PAREN_CODE)}; "
            "run `lfwrap templates` to list them."
        )
    return _read_info(name, files[name])


# --------------------------------------------------------------------------- deepspeed


def deepspeed_presets() -> list[str]:
    return sorted(_template_files("deepspeed", DS_SUFFIX))


def render_deepspeed(name: str) -> dict[str, Any]:
    """A DeepSpeed config (z2, z3, z3_offload, or a user's) as a dict."""
    files = _template_files("deepspeed", DS_SUFFIX)
    if name not in files:
        raise UsageError(
            f"Unknown DeepSpeed preset `{name}`{did_you_mean(name, sorted(files), PAREN_CODE)}; "
            f"choose one of {', '.join(sorted(files))}."
        )
    path = files[name]
    try:
        text = _environment(json.dumps).from_string(path.read_text(encoding="utf-8")).render()
        data = json.loads(text)
    except (TemplateError, json.JSONDecodeError) as exc:
        raise ConfigError(f"DeepSpeed template {path} does not render to JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed template {path} must render to a JSON object.")
    return data


def write_deepspeed(name: str, folder: Path) -> Path:
    """Write preset `name` to folder/ds_NAME.json (atomically) and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ds_{name}.json"
    write_atomic(path, json.dumps(render_deepspeed(name), indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- --set


def parse_sets(sets: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """`key=value` strings (or a mapping) as (key, raw value) pairs, in order."""
    if isinstance(sets, Mapping):
        pairs = [(str(key), value) for key, value in sets.items()]
    else:
        pairs = []
        for item in sets:
            key, sep, raw = item.partition("=")
            if not sep:
                raise UsageError(f"--set {item!r} has no `=`; write it as --set key=value (lora_rank=16).")
            pairs.append((key.strip(), raw))
    for key, _ in pairs:
        if not _KEY.match(key):
            raise UsageError(f"--set {key!r}: a key is a name like `lora_rank` (letters, digits, `_`).")
    return pairs


def _coerce_plain(name: str, raw: str, default: Any) -> Any:
    """Type a --set value for a template variable that is not a LLaMA-Factory key, by its default."""
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("true", "yes", "on", "1"):
                return True
            if text.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise UsageError(f"--set {name}={raw}: `{name}` expects a {kind} like {default!r}.") from None
    if isinstance(default, list):
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.lower() in ("null", "none", "~"):
        return None
    return raw


# --------------------------------------------------------------------------- rendering


def _apply_overrides(text: str, overrides: dict[str, Any]) -> str:
    """Replace top-level `key: value` lines of the rendered text, or append the keys at the end."""
    lines = text.splitlines()
    appended: list[str] = []
    for key, value in overrides.items():
        line = f"{key}: {yaml_value(value)}"
        head = re.compile(rf"^{re.escape(key)}\s*:")
        hits = [i for i, existing in enumerate(lines) if head.match(existing)]
        if not hits:
            appended.append(line)
            continue
        start = hits[-1]
        end = start + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t", "-"):
            end += 1  # the old value's continuation lines
        lines[start:end] = [line]
    if appended:
        lines += ["", "### set on the command line", *appended]
    return "\n".join(lines) + "\n"


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Template `{name}` renders text that is not YAML: {exc}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Template `{name}` must render a YAML mapping of keys, not {type(data).__name__}.")
    return data


def render_template(
    name: str,
    sets: Sequence[str] | Mapping[str, Any] = (),
    *,
    extra: Mapping[str, Any] | None = None,
) -> Rendered:
    """Render template `name` with `--set` overrides and already-typed `extra` keys (which win).

    Raises UsageError for an unknown template or key or a badly typed value, and ConfigError listing
    every problem when the rendered config fails validation.
    """
    from wrapper.schema import load_schema
    from wrapper.validate import check_config

    info = get_template(name)
    schema = load_schema()
    values = {var: spec.default for var, spec in info.variables.items()}
    overrides: dict[str, Any] = {}

    for key, raw in parse_sets(sets):
        known = schema.field(key) is not None
        if key not in values and not known:
            candidates = sorted(set(values) | set(schema.fields))
            raise UsageError(
                f"--set {key}={raw}: `{key}` is neither a variable of template `{name}` nor a "
                f"LLaMA-Factory {schema.version} key{did_you_mean(key, candidates, PAREN_CODE)}; "
                f"run `lfwrap templates show {name}` to see its variables."
            )
        if not isinstance(raw, str):
            typed = raw
        elif known:
            typed = schema.coerce(key, raw)
        else:
            typed = _coerce_plain(key, raw, values[key])
        if key in values:
            values[key] = typed
        else:
            overrides[key] = typed
    for key, value in (extra or {}).items():
        if not _KEY.match(key):
            raise UsageError(f"Config key {key!r} is not a name like `output_dir`.")
        if key in values:
            values[key] = value
        else:
            overrides[key] = value

    _fill_computed(values)
    try:
        text = _environment(yaml_value).from_string(info.path.read_text(encoding="utf-8")).render(**values)
    except TemplateError as exc:
        raise ConfigError(f"Template {info.path} failed to render: {exc}.") from None
    data = _parse(name, text)
    if overrides:
        expected = {**data, **overrides}
        text = _apply_overrides(text, overrides)
        data = _parse(name, text)
        if data != expected:
            raise ConfigError(
                f"Template {info.path} could not take the overrides {', '.join(sorted(overrides))}; "
                "declare them as variables of the template."
            )

    problems = check_config(data, text=text, file=f"{name} (rendered)")
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(
            f"Template `{name}` renders a config with {len(errors)} error(s); "
            "fix the --set values (or the template) as listed below.",
            problems=problems,
        )
    return Rendered(template=info, text=text, data=data, problems=problems)


def _fill_computed(values: dict[str, Any]) -> None:
    """Defaults that depend on the machine: lfwrap's dataset folder, the DeepSpeed preset. Writes nothing:
    the dataset folder's dataset_info.json is read in memory by validation and written with a run, and
    the preset goes into the config inline (LLaMA-Factory's `deepspeed` takes a JSON path or a mapping;
    a run writes it to its own ds_config.json)."""
    if "dataset_dir" in values and values["dataset_dir"] in (None, ""):
        values["dataset_dir"] = str(home.user_datasets_dir())
    if "deepspeed" in values and values["deepspeed"] in (None, "") and values.get("ds_preset"):
        values["deepspeed"] = render_deepspeed(str(values["ds_preset"]))
