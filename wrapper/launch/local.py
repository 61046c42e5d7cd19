"""The local backend's pieces: where llamafactory-cli is, its version, the child's environment, and
starting a child in its own process group (stopping it: wrapper.launch.process.stop_group)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    """The installed llamafactory's version, read off its dist-info folder's name: importing
    importlib.metadata alone costs ~25 ms, and this runs before every launch."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("llamafactory-") and name.endswith(".dist-info"):
                return name[len("llamafactory-") : -len(".dist-info")]
    return None


# Optional packages a run can need, and how to get them (or stop needing them).
EXTRAS = {
    "deepspeed": "pip install deepspeed (built for your CUDA), or drop --deepspeed / the deepspeed: key",
    "ray": "pip install 'ray[train]', or drop --ray-address / --ray-num-workers (USE_RAY)",
}


def cli_python(cli: str) -> str:
    """The interpreter that runs `cli`: its #! line when that names an existing file, else this one."""
    try:
        with open(cli, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return sys.executable
    if first.startswith(b"#!"):
        parts = first[2:].decode(errors="replace").split()
        if parts and Path(parts[0]).name.startswith("python") and Path(parts[0]).is_file():
            return parts[0]
    return sys.executable


def missing_modules(modules: list[str], python: str) -> list[str]:
    """Which of `modules` `python` cannot import (found by spec, nothing is imported)."""
    if not modules:
        return []
    # Same bin folder, same environment (resolving symlinks would equate every venv of one base Python).
    if Path(python).absolute().parent == Path(sys.executable).absolute().parent:
        from importlib.util import find_spec

        return [name for name in modules if find_spec(name) is None]
    probe = "import sys, importlib.util as u; print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])"
    result = subprocess.run([python, "-c", probe, *modules], capture_output=True, text=True, timeout=60)
    return result.stdout.split() if result.returncode == 0 else []


def check_extras(config: dict[str, object], env: dict[str, str], cli: str) -> None:
    """Refuse a local launch that needs DeepSpeed or Ray when llamafactory-cli's Python lacks it;
    LLaMA-Factory would otherwise fail only after loading the model."""
    wanted = []
    if config.get("deepspeed"):
        wanted.append("deepspeed")
    if {**os.environ, **env}.get("USE_RAY", "").lower() in ("1", "true", "y"):
        wanted.append("ray")
    python = cli_python(cli)
    missing = missing_modules(wanted, python)
    if missing:
        how = "; ".join(f"{name}: {EXTRAS[name]}" for name in missing)
        raise LaunchError(f"This run needs {' and '.join(missing)}, which {python} cannot import. {how}.")


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
