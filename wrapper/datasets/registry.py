"""The dataset registry: bundled datasets plus the user's, rendered into one dataset_info.json.

    datasets/registry.yaml                 bundled entries (read-only, files next to it)
    $LFWRAP_HOME/datasets/registry.yaml    entries added by `lfwrap data add` / `data identity`
    $LFWRAP_HOME/datasets/dataset_info.json
        rendered from both (templates/dataset_info.json.j2): bundled files by absolute path, user
        files relative to that folder; user entries win on a name clash; entries someone added by
        hand (or through the web UI) are kept. Written atomically, under a file lock
    $LFWRAP_HOME/datasets/.registry.lock   held by every writer, so concurrent `data add` runs
                                           never lose a registration

`prepare_dataset_dir()` writes the rendered file and is what a run's creation uses; planning (render,
validate, --dry-run) reads the same entries in memory through `dataset_info_for()` and writes nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from wrapper import fileio, home
from wrapper.datasets.info import Columns, Tags, check_entries, read_dataset_info
from wrapper.errors import DatasetError, Problem, UsageError
from wrapper.pydantic_errors import loc_text
from wrapper.suggest import did_you_mean
from wrapper.yamlload import safe_load

INFO_FILE = "dataset_info.json"
REGISTRY_FILE = "registry.yaml"
TEMPLATE_FILE = "dataset_info.json.j2"
LOCK_FILE = ".registry.lock"
LOCK_TIMEOUT_SECONDS = 60.0
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Stems of lfwrap's own files in the datasets folder: NAME.json for these would replace them.
RESERVED_STEMS = ("dataset_info", "registry")


class RegistryEntry(BaseModel):
    """One dataset in a registry.yaml."""

    model_config = ConfigDict(extra="forbid")

    file: StrictStr
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: StrictBool = False
    columns: Columns | None = None
    tags: Tags | None = None
    description: StrictStr = ""
    rows: StrictInt | None = None
    copied: StrictBool = True  # lfwrap wrote the file (false: the user's own file, registered in place)


def check_name(name: str) -> str:
    """A dataset name that is a safe file stem: letters, digits, '_', '-', '.'; no '..'."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise UsageError(
            f"Dataset name {name!r} is not allowed; use letters, digits, '_', '-' or '.' "
            "(at most 64, starting with a letter or digit), e.g. my_qa."
        )
    stem = name.casefold().split(".")[0]  # case-insensitive file systems: Dataset_Info.json is ours too
    if stem in RESERVED_STEMS:
        raise UsageError(
            f"Dataset name {name!r} is reserved: lfwrap keeps its own {INFO_FILE} and {REGISTRY_FILE} in the "
            "datasets folder; choose another name, e.g. my_qa."
        )
    return name


def registry_lock() -> FileLock:
    """The lock every writer of the datasets folder holds (one object per path, so it is re-entrant)."""
    folder = home.user_datasets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / LOCK_FILE), timeout=LOCK_TIMEOUT_SECONDS, is_singleton=True)


def load_registry(path: Path) -> dict[str, RegistryEntry]:
    """Read a registry.yaml (missing file: empty registry)."""
    if not path.is_file():
        return {}
    try:
        data = safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path} is not valid YAML ({exc}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must map dataset names to entries; fix or delete it.")
    entries: dict[str, RegistryEntry] = {}
    problems: list[Problem] = []
    for name, raw in data.items():
        try:
            entries[str(name)] = RegistryEntry.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors():
                loc = loc_text(error["loc"])
                hint = ""
                if error["type"] == "extra_forbidden":
                    hint = did_you_mean(str(error["loc"][-1]), tuple(RegistryEntry.model_fields))
                problems.append(Problem(f"dataset '{name}', key '{loc}': {error['msg']}{hint}", str(path)))
    if problems:
        raise DatasetError(f"{path} has {len(problems)} problem(s); fix or delete it.", problems)
    return entries


def bundled_registry() -> dict[str, RegistryEntry]:
    return load_registry(home.bundled_datasets_dir() / REGISTRY_FILE)


def user_registry() -> dict[str, RegistryEntry]:
    return load_registry(home.user_datasets_dir() / REGISTRY_FILE)


def info_entry(entry: RegistryEntry, file_name: str) -> dict[str, Any]:
    """The dataset_info.json entry LLaMA-Factory reads for a registry entry."""
    out: dict[str, Any] = {"file_name": file_name, "formatting": entry.formatting}
    if entry.ranking:
        out["ranking"] = True
    if entry.columns is not None:
        out["columns"] = entry.columns.model_dump(exclude_none=True)
    if entry.tags is not None:
        out["tags"] = entry.tags.model_dump(exclude_none=True)
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write text to path atomically, making its folder when needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, text)


def owned_files() -> set[Path]:
    """The files in the datasets folder that lfwrap wrote (registered and copied)."""
    folder = home.user_datasets_dir()
    return {(folder / entry.file).resolve() for entry in user_registry().values() if entry.copied}


def write_owned(path: Path, text: str) -> None:
    """Write one of lfwrap's own dataset files (call under registry_lock()); a file of that name that
    lfwrap did not write is refused, never replaced."""
    if path.exists() and path.resolve() not in owned_files():
        raise DatasetError(
            f"{path} already exists and was not written by lfwrap; move it away (or register it under "
            "another name with `lfwrap data add`) and run this again."
        )
    write_atomic(path, text)


def _template_path() -> Path:
    user = home.user_templates_dir() / TEMPLATE_FILE
    return user if user.is_file() else home.bundled_templates_dir() / TEMPLATE_FILE


def render_dataset_info(entries: dict[str, dict[str, Any]]) -> str:
    """Render dataset_info.json text; every value goes through a JSON filter, never pasted raw."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    template = env.from_string(_template_path().read_text(encoding="utf-8"))
    text = template.render(entries=entries)
    if json.loads(text) != entries:  # the template must not add, drop or change anything
        raise DatasetError(f"{_template_path()} rendered a different dataset_info.json; fix the template.")
    return text


def hand_added_entries() -> dict[str, dict[str, Any]]:
    """Entries of $LFWRAP_HOME/datasets/dataset_info.json that neither registry holds (added by hand or
    through the web UI); every name and key validated."""
    info_path = home.user_datasets_dir() / INFO_FILE
    if not info_path.is_file():
        return {}
    skip = {*bundled_registry(), *user_registry()}
    return {name: entry for name, entry in read_dataset_info(info_path).items() if name not in skip}


def merged_entries(drop: str | None = None) -> dict[str, dict[str, Any]]:
    """Bundled + kept hand-added + user-registered entries, in that order of precedence (last wins);
    `drop` names a hand-added entry to leave out (it is being removed). Reads only."""
    bundled_dir = home.bundled_datasets_dir()
    info_path = home.user_datasets_dir() / INFO_FILE
    bundled = bundled_registry()
    entries = {name: info_entry(entry, str(bundled_dir / entry.file)) for name, entry in bundled.items()}
    if info_path.is_file():
        for name, entry in read_dataset_info(info_path).items():
            if name not in bundled and name != drop:
                entries[name] = entry
    for name, user_entry in user_registry().items():
        entries[name] = info_entry(user_entry, user_entry.file)
    return entries


def _checked_entries(drop: str | None = None) -> dict[str, dict[str, Any]]:
    folder = home.user_datasets_dir()
    entries = merged_entries(drop)
    problems = check_entries(entries, file=str(folder / INFO_FILE))
    if problems:
        message = f"The dataset registry under {folder} is inconsistent; fix the entries below."
        raise DatasetError(message, problems)
    return entries


def is_lfwrap_dataset_dir(dataset_dir: Path) -> bool:
    return Path(dataset_dir).expanduser().resolve() == home.user_datasets_dir().resolve()


def dataset_info_for(dataset_dir: Path) -> dict[str, dict[str, Any]] | None:
    """The dataset_info.json entries LLaMA-Factory will read from `dataset_dir`, without writing anything:
    for lfwrap's own folder the entries `prepare_dataset_dir()` would write; None when there is no file."""
    if is_lfwrap_dataset_dir(dataset_dir):
        return _checked_entries()
    info_path = Path(dataset_dir).expanduser() / INFO_FILE
    return read_dataset_info(info_path) if info_path.is_file() else None


def prepare_dataset_dir(drop: str | None = None) -> Path:
    """$LFWRAP_HOME/datasets with an up-to-date dataset_info.json (without the hand-added entry `drop`);
    returns that folder. Writes (under the registry lock): for creating a run or a registry change."""
    folder = home.user_datasets_dir()
    with registry_lock():
        text = render_dataset_info(_checked_entries(drop))
        info_path = folder / INFO_FILE
        if not info_path.is_file() or info_path.read_text(encoding="utf-8") != text:
            write_atomic(info_path, text)
    return folder


def register(name: str, entry: RegistryEntry) -> Path:
    """Add or replace a user dataset in $LFWRAP_HOME/datasets/registry.yaml; returns the dataset dir."""
    check_name(name)
    folder = home.user_datasets_dir()
    target = (folder / entry.file).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UsageError(f"Dataset file {entry.file!r} is outside {folder}; datasets must live inside it.")
    with registry_lock():  # read-modify-write: without the lock a concurrent add could be lost
        current = _user_entries()
        current[name] = entry.model_dump(exclude_none=True, exclude_defaults=True) | {"file": entry.file}
        _write_registry(folder, current)
        return prepare_dataset_dir()


def unregister(name: str) -> None:
    """Drop a user dataset from $LFWRAP_HOME/datasets/registry.yaml (its file is the caller's business)."""
    with registry_lock():
        current = _user_entries()
        current.pop(name, None)
        _write_registry(home.user_datasets_dir(), current)


def _user_entries() -> dict[str, dict[str, Any]]:
    """The user registry as plain data, the shape registry.yaml stores."""
    return {
        key: value.model_dump(exclude_none=True, exclude_defaults=True) | {"file": value.file}
        for key, value in user_registry().items()
    }


def _write_registry(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    header = "# Added by `lfwrap data add` / `lfwrap data identity`; rendered into dataset_info.json.\n"
    write_atomic(folder / REGISTRY_FILE, header + yaml.safe_dump(entries, allow_unicode=True, sort_keys=True))


def dataset_files(dataset_dir: Path, names: list[str]) -> list[Path]:
    """The data files the named datasets use (a folder entry yields every file in it). Reads only."""
    info = dataset_info_for(dataset_dir)
    if info is None:
        raise DatasetError(
            f"There is no {INFO_FILE} in {dataset_dir}; point dataset_dir at the folder holding it."
        )
    files: list[Path] = []
    for name in names:
        if name not in info:
            raise DatasetError(
                f"Dataset '{name}' is not in {dataset_dir / INFO_FILE}{did_you_mean(name, list(info))}; "
                "register it with `lfwrap data add`."
            )
        file_name = info[name].get("file_name")
        if not file_name:
            continue  # a hub or script dataset: no local file
        path = dataset_dir / file_name  # an absolute file_name replaces dataset_dir, as in os.path.join
        if path.is_dir():
            files.extend(sorted(child for child in path.iterdir() if child.is_file()))
        else:
            files.append(path)
    return files
