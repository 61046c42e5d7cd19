"""Check every row of a registered dataset with its own dataset_info.json entry, the way LLaMA-Factory will
load it: formatting, ranking, columns, tags, pt's text column, kto_tag, media files under media_dir.

    problems = check_dataset(name, entry, dataset_dir, stage="sft", media_dir=None)

Verdicts on large files (CACHE_MIN_BYTES and up) are cached by file size, mtime and everything the
verdict depends on (entry, stage, media_dir) in ONE file, data-check.json in lfwrap's cache folder
($LFWRAP_CACHE_DIR, else $XDG_CACHE_HOME/lfwrap, else ~/.cache/lfwrap), so validating a big set again is
instant. The cache is not state: deleting it only costs a re-check. Small files are simply checked again
(below 4 MiB that takes well under 0.1 s), so planning a usual run writes nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from wrapper.datasets.check import check_file
from wrapper.datasets.rows import Spec, entry_spec
from wrapper.errors import DatasetError, Problem
from wrapper.fileio import write_atomic

# LLaMA-Factory 0.9.5 extras/constants.py FILEEXT2TYPE: the file types it loads.
FILEEXT2TYPE = {
    "arrow": "arrow",
    "csv": "csv",
    "json": "json",
    "jsonl": "json",
    "parquet": "parquet",
    "txt": "text",
}
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "cloud_file_name")
MAX_ERRORS = 10
CACHE_VERSION = 2
CACHE_MIN_BYTES = 4 * 1024 * 1024  # smaller files are re-checked faster than a cache write is worth
TRUNCATED_WARN_SHARE = 0.01  # warn when more than 1% of a dataset's rows exceed cutoff_len


def spec_for_entry(
    entry: dict[str, Any], *, stage: str | None, media_dir: Path | None, sample: list[Any] | None = None
) -> Spec:
    """The row rules an entry implies; `stage` pt means pre-training text. Without a stage, an alpaca
    entry naming a prompt column and no answer column (like upstream's c4_demo) is taken for pt unless
    the `sample` rows carry the default answer column `output`."""
    raw_columns, raw_tags = entry.get("columns"), entry.get("tags")
    columns = raw_columns if isinstance(raw_columns, dict) else None  # None: LLaMA-Factory's defaults
    tags = raw_tags if isinstance(raw_tags, dict) else None
    formatting = entry.get("formatting", "alpaca")
    answers = {"response", "chosen", "rejected", "kto_tag"}
    guess_pt = not entry.get("ranking") and "prompt" in (columns or {}) and not answers & set(columns or {})
    if guess_pt and sample:
        guess_pt = not any(isinstance(row, dict) and "output" in row for row in sample)
    pt = formatting == "alpaca" and (stage == "pt" or (stage is None and guess_pt))
    # exactly the columns and tags the entry maps: LLaMA-Factory ignores every other field of a row
    return entry_spec(
        formatting,
        ranking=bool(entry.get("ranking", False)),
        pt=pt,
        columns=columns,
        tags=tags,
        media_dir=media_dir,
    )


def entry_source(entry: dict[str, Any]) -> str:
    """Where LLaMA-Factory loads the entry from, in its order: hub, script, cloud file, local file."""
    if any(key in entry for key in ("hf_hub_url", "ms_hub_url", "om_hub_url")):
        return "hub"
    if "script_url" in entry:
        return "script"
    if "cloud_file_name" in entry:
        return "cloud"
    return "file"


def data_files(name: str, entry: dict[str, Any], dataset_dir: Path) -> list[Path]:
    """The local files of a `file_name` entry, as LLaMA-Factory lists them; DatasetError as it refuses."""
    local = dataset_dir / str(entry.get("file_name"))
    if local.is_dir():
        files = sorted(path for path in local.iterdir())
    elif local.is_file():
        files = [local]
    else:
        raise DatasetError(f"dataset '{name}': file {local} not found; fix file_name or dataset_dir")
    if not files:
        raise DatasetError(f"dataset '{name}': folder {local} is empty")
    kinds = {FILEEXT2TYPE.get(path.suffix[1:]) for path in files}
    if None in kinds:
        bad = next(path for path in files if FILEEXT2TYPE.get(path.suffix[1:]) is None)
        raise DatasetError(
            f"dataset '{name}': {bad.name} is not a file type LLaMA-Factory loads ({', '.join(FILEEXT2TYPE)})"
        )
    if len(kinds) > 1:
        raise DatasetError(f"dataset '{name}': the files in {local} must all be of one type")
    return files


def registered_entry(name: str, dataset_dir: Path | None) -> tuple[dict[str, Any], Path]:
    """The entry of dataset `name` in dataset_dir's dataset_info.json (default: lfwrap's registry) and the
    folder its file_name is relative to; DatasetError with "did you mean" when it is not there."""
    from wrapper.datasets.info import read_dataset_info
    from wrapper.suggest import did_you_mean

    if dataset_dir is None:
        from wrapper.datasets.registry import merged_entries
        from wrapper.home import user_datasets_dir

        entries, folder, where = merged_entries(), user_datasets_dir(), "lfwrap's datasets"
    else:
        folder = dataset_dir.expanduser().resolve()
        info_path = folder / "dataset_info.json"
        if not info_path.is_file():
            raise DatasetError(
                f"No dataset_info.json in {folder}; point --dataset-dir at the folder holding it."
            )
        entries, where = read_dataset_info(info_path), str(info_path)
    if name not in entries:
        raise DatasetError(
            f"Dataset '{name}' is not in {where}{did_you_mean(name, list(entries))}; "
            "see `lfwrap data list` or pass --dataset-dir."
        )
    return entries[name], folder


def _cache_path() -> Path:
    folder = os.environ.get("LFWRAP_CACHE_DIR")
    if not folder:
        folder = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lfwrap")
    return Path(folder).expanduser() / "data-check.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def _write_cache(cache: dict[str, Any]) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(cache))


def _cache_key(path: Path, spec: Spec) -> str:
    stat = path.stat()
    what = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, repr(spec)]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()


def _lengths(
    entries: dict[str, Any], files: list[Path], spec: Spec, tokenizer: Path, cutoff_len: int
) -> tuple[dict[str, Any] | None, bool]:
    """Token-length figures (cached like the row verdicts, keyed also by tokenizer file and cutoff_len)."""
    from wrapper.datasets.lengths import token_lengths

    stat = tokenizer.stat()
    parts = [_cache_key(path, spec) for path in files] + [str(tokenizer), stat.st_mtime_ns, cutoff_len]
    key = "lengths:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    if key in entries:
        return entries[key], False
    report = token_lengths(files, spec, tokenizer, cutoff_len=cutoff_len)
    if report is None:
        return None, False
    entries[key] = {"rows": report.rows, "over": report.over, "percentiles": report.percentiles}
    return entries[key], True


def check_dataset(
    name: str,
    entry: dict[str, Any],
    dataset_dir: Path,
    *,
    stage: str | None,
    media_dir: Path | None,
    file: str,
    line: int | None,
    use_cache: bool = True,
    tokenizer: Path | None = None,
    cutoff_len: int = 2048,
) -> list[Problem]:
    """Problems of one dataset's rows (errors carry row numbers), reported at `file`:`line`; with a local
    `tokenizer` (tokenizer.json), a warning when many rows exceed `cutoff_len` tokens."""
    source = entry_source(entry)
    if source != "file":
        where = (
            entry.get("hf_hub_url")
            or entry.get("ms_hub_url")
            or entry.get("om_hub_url")
            or entry.get("script_url")
            or entry.get("cloud_file_name")
        )
        note = f"dataset '{name}' is loaded from {source} ({where}); its rows can't be checked offline"
        return [Problem(note, file, line, "warning")]
    try:
        files = data_files(name, entry, dataset_dir)
    except DatasetError as exc:
        return [Problem(str(exc), file, line)]
    spec = spec_for_entry(entry, stage=stage, media_dir=media_dir)
    cache = _read_cache() if use_cache else {}
    entries = cache.setdefault("entries", {})
    problems: list[Problem] = []
    changed = False
    for path in files:
        if path.suffix.lower() not in (".json", ".jsonl"):
            kind = FILEEXT2TYPE[path.suffix[1:]]
            message = f"dataset '{name}': {path.name} is {kind}; lfwrap checks the rows of JSON / JSONL only"
            problems.append(Problem(message, file, line, "warning"))
            continue
        # media files can appear or vanish without the data file changing: those verdicts are not kept
        big = path.stat().st_size >= CACHE_MIN_BYTES
        key = _cache_key(path, spec) if big and not spec.media else None
        found = entries.get(key) if key else None
        if found is None:
            report = check_file(path, spec=spec, max_errors=MAX_ERRORS)
            rows = [[problem.line, str(problem)] for problem in report.problems]
            if report.bad_rows > MAX_ERRORS:
                rows.append([None, f"... and {report.bad_rows - MAX_ERRORS} more bad row(s)"])
            if report.fatal:
                rows.append([None, f"stopped: {report.fatal}"])
            found = {
                "rows": report.rows,
                "bad": report.bad_rows,
                "fatal": bool(report.fatal),
                "problems": rows,
            }
            if key:
                entries[key] = found
                changed = True
        if found["bad"] or found["fatal"]:
            what = f"{found['bad']} bad row(s) of {found['rows']}" if found["bad"] else "a syntax error"
            summary = (
                f"dataset '{name}' ({spec.kind}): {path} has {what}, which LLaMA-Factory would skip or fail "
                "on; fix the rows listed (or pass --no-data-check)"
            )
            problems.append(Problem(summary, file, line))
            problems += [Problem(text, str(path), at) for at, text in found["problems"]]
    json_files = [path for path in files if path.suffix.lower() in (".json", ".jsonl")]
    if tokenizer is not None and json_files and not problems:
        lengths, fresh = _lengths(entries, json_files, spec, tokenizer, cutoff_len)
        # token counts cost more than row checks: kept from a quarter of the row-cache threshold
        changed = changed or (fresh and sum(p.stat().st_size for p in json_files) >= CACHE_MIN_BYTES // 4)
        if lengths and lengths["rows"] and lengths["over"] / lengths["rows"] > TRUNCATED_WARN_SHARE:
            from wrapper.datasets.lengths import LengthReport

            figures = LengthReport(lengths["rows"], lengths["over"], cutoff_len, lengths["percentiles"])
            problems.append(
                Problem(
                    f"dataset '{name}': {figures.summary()} (LLaMA-Factory does so silently); raise "
                    "cutoff_len or shorten the rows",
                    file,
                    line,
                    "warning",
                )
            )
    if changed and use_cache:
        cache["version"] = CACHE_VERSION
        if len(entries) > 1000:  # keep the file small: the newest results win
            cache["entries"] = dict(list(entries.items())[-500:])
        _write_cache(cache)
    return problems
