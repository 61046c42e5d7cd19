"""`lfwrap data add`, `data list` and `data remove` as library calls."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrapper import home
from wrapper.datasets.check import CheckReport, check_file
from wrapper.datasets.info import Columns, Tags, read_dataset_info
from wrapper.datasets.registry import (
    INFO_FILE,
    RegistryEntry,
    bundled_registry,
    check_name,
    hand_added_entries,
    merged_entries,
    prepare_dataset_dir,
    register,
    registry_lock,
    unregister,
    user_registry,
)
from wrapper.datasets.rows import defaults
from wrapper.errors import DatasetError, Problem, UsageError
from wrapper.fileio import copy_atomic
from wrapper.suggest import did_you_mean


def parse_pairs(items: Sequence[str], allowed: tuple[str, ...], option: str) -> dict[str, str]:
    """'k=v' items (each may hold several, comma-separated) checked against LLaMA-Factory's names."""
    pairs: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise UsageError(f"{option} {part!r} is not key=value; write e.g. {option} prompt=question.")
            if key not in allowed:
                raise UsageError(
                    f"{option}: unknown name '{key}'{did_you_mean(key, allowed)}; "
                    f"use one of {', '.join(allowed)}."
                )
            pairs[key] = value
    return pairs


def effective_columns(
    formatting: str, ranking: bool, given: dict[str, str], seen: set[str]
) -> dict[str, str]:
    """The columns to write: the ones given, plus each default whose field the file actually has.

    LLaMA-Factory reads history, system, chosen, rejected, kto_tag ... only when dataset_info.json
    names them, so a field present in the data but not named here would be silently dropped.
    """
    base, _ = defaults(formatting)
    columns = dict(given)
    for name, field_name in base.items():
        if name in columns or (name in ("chosen", "rejected") and not ranking):
            continue
        if field_name in seen:
            columns[name] = field_name
    return columns


@dataclass
class Added:
    name: str
    path: Path
    report: CheckReport
    dataset_dir: Path


def add_dataset(
    name: str,
    source: Path,
    *,
    formatting: str = "alpaca",
    ranking: bool = False,
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    description: str = "",
    max_errors: int = 20,
    force: bool = False,
) -> Added:
    """Check a data file, copy it into $LFWRAP_HOME/datasets and register it under `name`.

    Raises DatasetError (with the report's problems) when any row is bad; nothing is copied then.
    Without `force`, a file lfwrap did not write, or an entry added by hand, is never replaced.
    """
    check_name(name)
    columns, tags = dict(columns or {}), dict(tags or {})
    folder = home.user_datasets_dir().resolve()
    suffix = source.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UsageError(f"{source} is not a .json or .jsonl file; convert it to JSON Lines first.")
    target = (folder / f"{name}{suffix}").resolve()
    if target.parent != folder:
        raise UsageError(f"Dataset name {name!r} would write outside {folder}; choose a plain name.")
    report = check_file(
        source, formatting=formatting, ranking=ranking, columns=columns, tags=tags, max_errors=max_errors
    )
    if not report.ok:
        problems = [Problem(str(problem), str(source), problem.line) for problem in report.problems]
        if report.fatal:
            problems.append(Problem(f"stopped: {report.fatal}", str(source)))
        raise DatasetError(
            f"{source} has {report.bad_rows} bad row(s) of {report.rows}; fix them (run `lfwrap data check "
            f"{source} --formatting {formatting}` for the full report) and add it again.",
            problems,
        )
    if report.rows == 0:
        raise DatasetError(f"{source} has no rows; add at least one row before registering it.")
    written_columns = effective_columns(formatting, ranking, columns, report.keys)
    written_tags = tags
    if formatting == "openai":
        written_tags = {**defaults("openai")[1], **tags}
    with registry_lock():  # the checks, the copy and the registration as one step
        previous = user_registry().get(name)
        in_place = source.resolve() == target
        if not force:
            _refuse_clobbering(name, target, folder, in_place)
        if not in_place:
            _copy_into(source, target, folder)
        same_copy = previous is not None and previous.file == target.name and previous.copied
        entry = RegistryEntry(
            file=target.name,
            formatting=formatting,  # type: ignore[arg-type]
            ranking=ranking,
            columns=Columns(**written_columns) if written_columns else None,
            tags=Tags(**written_tags) if written_tags else None,
            description=description,
            rows=report.rows,
            # registered in place: the user's own file, which `data remove` must leave alone
            copied=not in_place or same_copy,
        )
        dataset_dir = register(name, entry)
        if previous is not None and previous.file != target.name and previous.copied:  # other suffix
            stale = (folder / previous.file).resolve()
            if stale.parent == folder:
                stale.unlink(missing_ok=True)
    return Added(name=name, path=target, report=report, dataset_dir=dataset_dir)


def _refuse_clobbering(name: str, target: Path, folder: Path, in_place: bool) -> None:
    """DatasetError when adding `name` would replace something lfwrap did not write."""
    info = folder / INFO_FILE
    hand = hand_added_entries()
    if name in hand:
        raise DatasetError(
            f"'{name}' is an entry added by hand to {info}; choose another name, or pass --force to "
            "replace it."
        )
    ours = {(folder / entry.file).resolve() for entry in user_registry().values() if entry.copied}
    if not in_place and target.exists() and target not in ours:
        raise DatasetError(
            f"{target} already exists and was not written by lfwrap; choose another name, or pass --force "
            "to overwrite it."
        )
    for other, entry in hand.items():
        file_name = entry.get("file_name")
        if file_name and (folder / str(file_name)).resolve() == target:
            raise DatasetError(
                f"{target} is the file of the hand-added dataset '{other}' in {info}; choose another name, "
                "or pass --force to overwrite it."
            )


def _copy_into(source: Path, target: Path, folder: Path) -> None:
    """Copy source to target atomically; target must be a file directly inside folder."""
    if target.parent != folder or target.is_symlink() or target.is_dir():
        raise DatasetError(f"Refusing to write {target}: it is not a plain file inside {folder}.")
    copy_atomic(source, target)


@dataclass
class Listed:
    name: str
    source: str  # "bundled", "user" or "hand-added"
    formatting: str
    ranking: bool
    rows: int | None
    file: str


def _count_rows(path: Path) -> int | None:
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return len(data) if isinstance(data, list) else None


def list_datasets() -> list[Listed]:
    """Every dataset the rendered dataset_info.json offers, with where it comes from."""
    bundled = bundled_registry()
    user = user_registry()
    folder = home.user_datasets_dir()
    listed: list[Listed] = []
    for name, entry in merged_entries().items():
        file_name: Any = entry.get("file_name") or next(
            (
                entry[key]
                for key in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
                if entry.get(key)
            ),
            "",
        )
        if name in user:
            source, rows = "user", user[name].rows
        elif name in bundled:
            source, rows = "bundled", _count_rows(Path(file_name))
        else:
            source = f"hand-added in {INFO_FILE}"
            rows = _count_rows(folder / file_name) if entry.get("file_name") else None
        listed.append(
            Listed(
                name,
                source,
                entry.get("formatting", "alpaca"),
                bool(entry.get("ranking")),
                rows,
                str(file_name),
            )
        )
    return listed


@dataclass
class Removed:
    name: str
    deleted: Path | None  # the data file removed with it (only a file lfwrap copied in)
    kept: Path | None  # a hand-added entry's file, which lfwrap did not create and leaves alone
    bundled_back: bool  # a bundled dataset of that name is offered again


def remove_dataset(name: str, *, keep_file: bool = False) -> Removed:
    """Unregister a user or hand-added dataset; the copy `data add` made is deleted unless keep_file.

    Bundled datasets cannot be removed; removing a user dataset that shadowed one brings it back.
    Run directories keep their own copies, so finished and running runs are not affected.
    """
    folder = home.user_datasets_dir()
    info_path = folder / INFO_FILE
    user, bundled = user_registry(), bundled_registry()
    in_info = read_dataset_info(info_path) if info_path.is_file() else {}
    if name not in user and (name in bundled or name not in in_info):
        if name in bundled:
            raise UsageError(
                f"'{name}' is a bundled dataset and cannot be removed; it is only used when a run names it."
            )
        known = sorted({*user, *in_info} - set(bundled))
        raise DatasetError(
            f"No dataset '{name}' to remove{did_you_mean(name, known)}; see `lfwrap data list`."
        )
    deleted = kept = None
    with registry_lock():
        if name in user:
            entry = user_registry()[name]
            file_path = (folder / entry.file).resolve()
            unregister(name)
            # only the copy lfwrap made: never a file registered in place, a symlink's target or a folder
            link = (folder / entry.file).is_symlink()
            ours = entry.copied and file_path.parent == folder.resolve() and not link
            if not keep_file and ours and file_path.is_file():
                file_path.unlink()
                deleted = file_path
            elif file_path.is_file():
                kept = file_path
        else:
            file_name = in_info[name].get("file_name")
            kept = (folder / file_name) if file_name else None
        prepare_dataset_dir(drop=name)  # else its line in dataset_info.json would be kept as hand-added
    return Removed(name=name, deleted=deleted, kept=kept, bundled_back=name in bundled)
