"""lfwrap's finished runs in LLaMA Board's checkpoint list.

LLaMA Board lists as checkpoints the folders of saves/<model name>/<finetuning type>/ that hold weights
(llamafactory/webui/control.py list_checkpoints) and loads the one picked from there, for its Chat,
Evaluate and Export tabs. So each succeeded training run gets a symlink

    $LFWRAP_HOME/saves/<model name>/<finetuning type>/<run name>  ->  the run's output folder

<model name> is LLaMA Board's name for the run's base model (its model list, by hub id; a local folder
named like a hub model counts as that model), else "Custom". A link is lfwrap's when it points into
$LFWRAP_HOME/runs/: only those are replaced or removed (when the run is gone); a folder, file or other
link of that name is the user's and is left alone. The board-run listing skips symlinks, so these never
come back as LLaMA Board runs. A run whose output_dir lies outside its run folder is not linked.

The Docker web UI mounts $LFWRAP_HOME/runs at the same path (read-only), so the links resolve there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wrapper.home import home, runs_dir

CUSTOM = "Custom"  # LLaMA Board's entry for a model outside its list


@dataclass(frozen=True)
class LinkReport:
    made: list[Path]  # links created or repointed
    removed: list[Path]  # lfwrap's links whose run is gone
    skipped: list[str]  # why a run could not be linked (a user's folder in the way)


def saves_root() -> Path:
    return home() / "saves"


def is_ours(path: Path) -> bool:
    """Whether `path` is a symlink lfwrap made (it points into $LFWRAP_HOME/runs/)."""
    if not path.is_symlink():
        return False
    target = Path(os.readlink(path))
    return target.is_absolute() and target.is_relative_to(runs_dir().resolve())


def board_model_name(model: str) -> str:
    """LLaMA Board's name for a base model: by hub id, by a folder named like a hub model, by the path
    the user gave a model in LLaMA Board (its user_config.yaml), else Custom."""
    from wrapper.schema import load_schema

    names = load_schema().model_names
    text = model.strip().rstrip("/")
    if text in names:
        return names[text]
    chosen = _user_paths().get(text)
    if chosen:
        return chosen
    if text.startswith(("/", "./", "../", "~")):
        base = text.rsplit("/", 1)[-1].lower()
        for hub_id, name in names.items():
            if hub_id.rsplit("/", 1)[-1].lower() == base:
                return name
    return CUSTOM


def _user_paths() -> dict[str, str]:
    """Model path -> name, as the user set them in LLaMA Board (llamaboard_cache/user_config.yaml)."""
    import yaml

    path = home() / "webui" / "llamaboard_cache" / "user_config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        chosen = config.get("path_dict") or {}
        return {str(value).strip().rstrip("/"): str(key) for key, value in chosen.items() if value}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def wanted_links() -> dict[Path, Path]:
    """link -> target for every succeeded training run whose output lies in its run folder."""
    from wrapper.errors import LfwrapError
    from wrapper.launch import runs
    from wrapper.launch.configfile import read_host_config

    wanted: dict[Path, Path] = {}
    for run_dir in runs.list_run_dirs():
        try:
            meta = runs.read_meta(run_dir)
            if meta.kind != "train" or meta.status != "succeeded":
                continue
            output = Path(meta.output_dir or run_dir / runs.OUTPUT_DIR).resolve()
            if not output.is_relative_to(run_dir.resolve()) or not output.is_dir():
                continue
            config = read_host_config(run_dir)
        except (LfwrapError, OSError):
            continue  # a damaged run is `lfwrap runs`' business, not the board's
        method = str(config.get("finetuning_type") or "lora")
        model = board_model_name(str(config.get("model_name_or_path") or "")).replace(" ", "")
        wanted[saves_root() / model / method / meta.name] = output  # spaces dropped as get_save_dir does
    return wanted


def sync_links() -> LinkReport:
    """Make saves/ hold a link for every finished run, and none for runs that are gone."""
    wanted = wanted_links()
    made, removed, skipped = [], [], []
    for link, target in wanted.items():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if (link.exists() or link.is_symlink()) and not is_ours(link):
            skipped.append(f"{link} exists and is not lfwrap's link; run {link.name} is not shown there")
            continue
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        except OSError as exc:
            skipped.append(f"cannot link run {link.name} at {link} ({exc.strerror})")
            continue
        made.append(link)
    for link in _entries():
        if is_ours(link) and link not in wanted:
            link.unlink()
            removed.append(link)
    return LinkReport(made, removed, skipped)


def unlink_run(name: str) -> list[Path]:
    """Remove lfwrap's links of run `name` (when the run is removed)."""
    removed = []
    for link in _entries():
        if (
            link.name == name
            and is_ours(link)
            and Path(os.readlink(link)).is_relative_to(runs_dir().resolve() / name)
        ):
            link.unlink()
            removed.append(link)
    return removed


def _entries() -> list[Path]:
    """saves/<model>/<type>/<entry> paths, dangling links included (glob skips those)."""
    found: list[Path] = []
    root = saves_root()
    for model in root.iterdir() if root.is_dir() else []:
        for method in model.iterdir() if model.is_dir() and not model.is_symlink() else []:
            if method.is_dir() and not method.is_symlink():
                found.extend(method.iterdir())
    return found
