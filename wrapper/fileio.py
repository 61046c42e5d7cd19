"""Atomic file writes: readers see the old file or the new one, never half of one.

    write_atomic(path, text)          # through a temporary file beside `path`, then os.replace
    copy_atomic(source, target)       # the same for a copy

The temporary file is created next to the target (os.replace never crosses file systems), with a name
no other writer uses (several threads or processes may write the same file), with the mode a plain
write would give (0o666 less the umask), and it is removed when the write fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def _replace_through_temp(path: Path, fill: Callable[[Path], object]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        fill(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; the folder must exist. Returns `path`."""
    _replace_through_temp(path, lambda temp: temp.write_text(text, encoding="utf-8"))
    return path


def copy_atomic(source: Path, target: Path) -> None:
    """Copy the contents of `source` to `target` atomically; the folder must exist."""
    _replace_through_temp(target, lambda temp: shutil.copyfile(source, temp))
