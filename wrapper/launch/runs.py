"""Run directories: `$LFWRAP_HOME/runs/<name>/`, one per training (or export) run.

    config.yaml         the exact file passed to LLaMA-Factory
    dataset_info.json   the dataset registry the run used, pointing at ...
    data/               ... copies of the data files it used
    meta.json           RunMeta: template, overrides, backend, versions, times, status, exit code, pids
    train.log           the full output of LLaMA-Factory
    output/             output_dir: adapter, checkpoints, trainer_log.jsonl, loss plot

Status moves queued → running → succeeded | failed | cancelled. meta.json is rewritten atomically,
so readers (the CLI, `lfwrap runs`, a job worker) never see half a file, and read-modify-written under
.meta.lock, so the launcher and the supervisor never undo each other's changes.

meta.json records the supervisor's identity (pid, start time from /proc/PID/stat, boot id): a pid or
process group id alone can belong to an unrelated process after a crash or a reboot, so nothing is
signalled unless the identity still matches. The supervisor holds .run.lock for the run's whole life
(and hands it to LLaMA-Factory), so a second writer (`--resume`, `runs remove`) is refused meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from wrapper.errors import RunError, UsageError
from wrapper.fileio import write_atomic
from wrapper.home import runs_dir
from wrapper.launch.process import same_process

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("succeeded", "failed", "cancelled")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")

CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
LOG_FILE = "train.log"
OUTPUT_DIR = "output"
TRAINER_LOG = "trainer_log.jsonl"
RUN_LOCK = ".run.lock"
META_LOCK = ".meta.lock"
LOST = "lost: the run's supervisor is gone"  # first error line of a run that ended unrecorded


@dataclass(frozen=True)
class RunMeta:
    """meta.json of a run. A plain dataclass, not a pydantic model: lfwrap writes this file itself, and
    the supervisor that starts every run should not pay pydantic's import time before LLaMA-Factory."""

    name: str
    kind: Literal["train", "export"] = "train"
    template: str | None = None
    overrides: list[str] = field(default_factory=list)
    backend: Literal["local", "docker"] = "local"
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the variables lfwrap added for the launch
    image: str | None = None
    llamafactory_version: str | None = None
    output_dir: str = ""
    created: str = ""
    started: str | None = None
    ended: str | None = None
    status: Status = "queued"
    exit_code: int | None = None
    pid: int | None = None  # the supervisor; it leads the run's process group
    pgid: int | None = None
    container_id: str | None = None
    error: list[str] = field(default_factory=list)  # the relevant lines of the log when the run failed
    docker: dict[str, Any] | None = None  # DockerOptions fields for the docker backend
    supervisor: dict[str, Any] | None = None  # process_identity() of the supervisor

    @classmethod
    def from_dict(cls, data: Any) -> RunMeta:
        """Checked reading of meta.json: a mapping with known keys, a name and a known status."""
        if not isinstance(data, dict):
            raise ValueError("meta.json must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        if not isinstance(data.get("name"), str):
            raise ValueError("`name` must be a string")
        if data.get("status", "queued") not in (*FINISHED, "queued", "running"):
            raise ValueError(f"unknown status {data.get('status')!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> RunMeta:
        return replace(self, **changes)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_run_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or ".." in name:
        raise UsageError(
            f"Run name {name!r} is not allowed; use letters, digits, '_', '-' or '.' "
            "(at most 80, starting with a letter or digit), e.g. conch-v1."
        )
    return name


def default_run_name(template: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", template) or "run"
    name = f"{base}-{stamp}"
    suffix = 1
    while (runs_dir() / name).exists():
        suffix += 1
        name = f"{base}-{stamp}-{suffix}"
    return name


def run_path(name: str) -> Path:
    """The folder of run `name`; the name is validated so it can never leave the runs folder."""
    check_run_name(name)
    root = runs_dir().resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise UsageError(f"Run name {name!r} points outside {root}; pick a plain name such as conch-v1.")
    return path


def find_run(name: str) -> Path:
    """An existing run's folder, or RunError naming the runs that do exist."""
    path = run_path(name)
    if not (path / META_FILE).is_file():
        from wrapper.suggest import did_you_mean

        hint = did_you_mean(name, [p.name for p in list_run_dirs()])
        raise RunError(f"No run named {name!r} under {runs_dir()}{hint}; list runs with `lfwrap runs`.")
    return path


def require_succeeded(run_dir: Path, action: str) -> RunMeta:
    """The run's meta if it succeeded, else RunError: only a finished run has an adapter to `action`."""
    meta = read_meta(run_dir)
    if meta.status != "succeeded":
        raise RunError(
            f"Run {meta.name!r} is {meta.status}, not succeeded; only a finished run has an adapter to "
            f"{action} (see `lfwrap runs show {meta.name}`)."
        )
    return meta


def list_run_dirs() -> list[Path]:
    root = runs_dir()
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / META_FILE).is_file()), key=lambda p: p.name)


def read_meta(run_dir: Path) -> RunMeta:
    path = run_dir / META_FILE
    try:
        return RunMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise RunError(f"{run_dir} is not a run directory (no {META_FILE}); see `lfwrap runs`.") from exc
    except (ValueError, TypeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); delete the run folder.") from exc


def write_meta(run_dir: Path, meta: RunMeta) -> None:
    text = json.dumps(meta.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(run_dir / META_FILE, text)


def update_meta(run_dir: Path, **changes: Any) -> RunMeta:
    with FileLock(str(run_dir / META_LOCK), is_singleton=True):
        meta = read_meta(run_dir).updated(**changes)
        write_meta(run_dir, meta)
    return meta


class RunLock:
    """An exclusive flock on run_dir/.run.lock. A plain descriptor (not filelock's) because the supervisor
    hands it to LLaMA-Factory (Popen pass_fds): the lock lives as long as either process does."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RUN_LOCK
        self.fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
                continue
            self.fd = fd
            return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_run_lock(run_dir: Path, what: str) -> RunLock:
    """The run's lock, acquired at once, or RunError: someone is writing the run."""
    lock = RunLock(run_dir)
    if not lock.acquire():
        name = run_dir.name
        raise RunError(
            f"Run {name!r} is active (a supervisor or LLaMA-Factory still holds {lock.path}); cannot "
            f"{what} now: wait for it, or stop it with `lfwrap runs cancel {name}`."
        )
    return lock


def supervisor_alive(meta: RunMeta) -> bool:
    """Whether the process recorded as the run's supervisor is still that process. A meta.json without
    a recorded identity (older, hand-made or stale) never counts as alive: its pid proves nothing."""
    recorded = meta.supervisor
    if not isinstance(recorded, dict) or not isinstance(recorded.get("pid"), int):
        return False
    return same_process(recorded["pid"], recorded)


def output_dir(run_dir: Path) -> Path:
    meta = read_meta(run_dir)
    return Path(meta.output_dir) if meta.output_dir else run_dir / OUTPUT_DIR


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint-N folder with the highest N in `folder`, if any."""
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


# --- runs trained in LLaMA Board (read-only) -------------------------------------------------------------
# `lfwrap webui` points LLaMA Board's saves/ at $LFWRAP_HOME/saves, where it writes each run to
# saves/<model name>/<finetuning type>/<run name>/ (llamafactory/webui/common.py get_save_dir) with its
# arguments in training_args.yaml. They are listed beside lfwrap's runs, never written to.
LLAMABOARD_ARGS = "training_args.yaml"
ADAPTER_FILES = ("adapter_config.json", "config.json")  # written when training finishes


@dataclass(frozen=True)
class BoardRun:
    name: str  # <model name>/<finetuning type>/<run name>, as LLaMA Board's save dir
    folder: Path
    status: str  # "succeeded" (the adapter or model is saved) or "incomplete" (stopped, failed or running)
    created: str


def llamaboard_runs() -> list[BoardRun]:
    """The runs LLaMA Board saved under $LFWRAP_HOME/saves (no folder is created)."""
    from wrapper.home import home

    root = home() / "saves"
    found = []
    for args in sorted(root.glob(f"*/*/*/{LLAMABOARD_ARGS}")) if root.is_dir() else []:
        folder = args.parent
        if folder.is_symlink() or folder.parent.is_symlink():  # lfwrap's own runs, linked for LLaMA Board
            continue
        if not _board_training(args):  # LLaMA Board's Evaluate tab writes the same file, without do_train
            continue
        done = any((folder / name).is_file() for name in ADAPTER_FILES)
        stamp = datetime.fromtimestamp(args.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        name = "/".join(folder.relative_to(root).parts)
        found.append(BoardRun(name, folder, "succeeded" if done else "incomplete", stamp))
    return found


def _board_training(args: Path) -> bool:
    import yaml

    try:
        config = yaml.safe_load(args.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # listed (as incomplete): a damaged file should not hide a run
    if not isinstance(config, dict):
        return True
    return bool(config.get("do_train")) or not (config.get("do_predict") or config.get("do_eval"))
