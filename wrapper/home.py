"""Where lfwrap reads and writes.

All state lfwrap writes lives under one home folder: $LFWRAP_HOME, default ~/.lfwrap.
The bundled templates and datasets are read-only defaults; files of the same name under the home
folder extend or override them.

These functions only name paths; nothing here creates a folder, so planning (render, validate,
--dry-run) leaves a fresh home untouched. Whoever writes creates the folder it writes into.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def home() -> Path:
    """The home folder (not created here)."""
    return Path(os.environ.get("LFWRAP_HOME") or Path.home() / ".lfwrap").expanduser().resolve()


def _bundled(name: str) -> Path:
    # Installed wheel: wrapper/_bundled/<name>; source checkout or editable install: <root>/<name>.
    packaged = _PACKAGE_DIR / "_bundled" / name
    return packaged if packaged.is_dir() else _PACKAGE_DIR.parent / name


def bundled_templates_dir() -> Path:
    return _bundled("templates")


def bundled_datasets_dir() -> Path:
    return _bundled("datasets")


def bundled_rag_docs_dir() -> Path:
    """The small document set about the (fictional) Krusty Krab that `lfwrap rag` examples index."""
    return _bundled("rag_docs") / "krusty-krab"


def _sub(name: str) -> Path:
    return home() / name


def user_templates_dir() -> Path:
    return _sub("templates")


def user_datasets_dir() -> Path:
    return _sub("datasets")


def runs_dir() -> Path:
    return _sub("runs")


def models_dir() -> Path:
    return _sub("models")
