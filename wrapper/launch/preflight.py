"""Checks before a run is created: can its output folder be written, and does the disk hold its checkpoints?

Training for an hour and then failing on the first checkpoint save is the costly way to learn either, so
`lfwrap train` asks first. The space a run needs is an estimate from the base model's weight files:

    full / freeze fine-tuning   a checkpoint holds the weights and Adam's two moments: ~3x the model
    lora (and other adapters)   a checkpoint holds the adapter and its optimizer state: ~5% of the model

times the checkpoints kept (save_total_limit, else 1), plus the final save. A hub model that is not in
the local Hugging Face cache has no known size: then only the folder is checked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from wrapper.errors import LaunchError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
FULL_FACTOR = 3.0
ADAPTER_FACTOR = 0.05


def _weights(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            total += path.stat().st_size  # follows the HF cache's snapshot symlinks to the blobs
    return total


def model_bytes(model: str) -> int | None:
    """Size of a model's weight files: a local folder, or a hub id found in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return _weights(path)
    if "/" not in model or model.startswith(("/", ".", "~")):
        return None
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")
    snapshots = hub / ("models--" + model.replace("/", "--")) / "snapshots"
    sizes = [_weights(snapshot) for snapshot in snapshots.iterdir()] if snapshots.is_dir() else []
    return max(sizes) if sizes else None


def needed_bytes(config: dict[str, Any], model_size: int) -> int:
    """The estimated disk a run's checkpoints and final save take."""
    full = str(config.get("finetuning_type") or "lora") in ("full", "freeze")
    per_save = model_size * (FULL_FACTOR if full else ADAPTER_FACTOR)
    limit = config.get("save_total_limit")
    kept = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 1
    return int(per_save * (kept + 1))


def _existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def check_output(config: dict[str, Any], output_dir: str | Path, run_name: str) -> None:
    """LaunchError when `output_dir` cannot be created and written, or the disk under it has less free
    space than the run's checkpoints are estimated to need."""
    target = Path(output_dir).expanduser()
    parent = _existing_parent(target)
    if not parent.is_dir():
        raise LaunchError(
            f"The output folder {target} of run {run_name} cannot be created: {parent} is a file; "
            "choose another folder with --set output_dir=PATH."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LaunchError(
            f"The output folder {target} of run {run_name} is not writable ({parent} refuses writes to "
            "this user); fix its permissions or choose another folder with --set output_dir=PATH."
        )
    size = model_bytes(str(config.get("model_name_or_path") or ""))
    if not size:
        return
    need = needed_bytes(config, size)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise LaunchError(
            f"Not enough free disk for run {run_name}: its checkpoints need about {_gb(need)} (model "
            f"{_gb(size)}, finetuning_type {config.get('finetuning_type') or 'lora'}, save_total_limit "
            f"{config.get('save_total_limit') or 'unset'}) but {parent} has {_gb(free)} free; free some "
            "space, set --set output_dir=PATH on a larger disk, or lower save_total_limit."
        )
