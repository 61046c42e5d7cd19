"""The local backend's pieces: where llamafactory-cli is, its version, the child's environment, and
starting / stopping a child in its own process group."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from wrapper.errors import LaunchError
from wrapper.launch.runs import group_members

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
    lfwrap's additions; output unbuffered so train.log follows the run as it happens.
    This interpreter's bin folder goes first on PATH: LLaMA-Factory starts `torchrun` by name, which an
    unactivated virtual environment would not otherwise provide."""
    env = {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]) if env.get("PATH") else bin_dir
    return env


def spawn(command: list[str], *, cwd: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `command` in its own session (so its whole process group can be stopped), output to a log."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL it after `grace` seconds; reap the process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_members(process.pid):
            break
    process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C, so a foreground command stopped by a service manager or `timeout`
    still stops the process group it started instead of leaving it behind."""
    signal.signal(signal.SIGTERM, _interrupt)
