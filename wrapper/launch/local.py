"""The local backend's pieces: where llamafactory-cli is, its version, and the child's environment."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from wrapper.errors import LaunchError

INSTALL_HINT = "install the local extra: pip install 'lfwrap[local]'"


def llamafactory_cli() -> str:
    """Absolute path of llamafactory-cli: next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "llamafactory-cli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("llamafactory-cli")
    if found is None:
        raise LaunchError(f"llamafactory-cli is not next to {sys.executable} nor on PATH; {INSTALL_HINT}.")
    return found


def llamafactory_version() -> str | None:
    try:
        return metadata.version("llamafactory")
    except metadata.PackageNotFoundError:
        return None


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment (CUDA_VISIBLE_DEVICES, NNODES, HF_HUB_OFFLINE ... pass through) plus
    lfwrap's additions; output unbuffered so train.log follows the run as it happens."""
    return {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
