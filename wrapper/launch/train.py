"""A training run's lifecycle, once its directory exists: launch → follow → result; cancel, resume, remove.

    run_dir = materialize(plan_run(config, template="sft_lora"))   # wrapper.launch.plan: the run folder
    launch(run_dir)                                  # starts the supervisor (own process group)
    meta = follow(run_dir, on_progress=print)        # until succeeded / failed / cancelled
    cancel_run(run_dir)                              # from anywhere, also for detached runs
    prepare_resume(run_dir); remove_run(run_dir)

The CLI (`lfwrap train`, `lfwrap runs`), a job worker or the gateway call these and nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapper.errors import LaunchError, RunError
from wrapper.launch import runs
from wrapper.launch.configfile import read_config, write_config
from wrapper.launch.local import check_extras, llamafactory_cli
from wrapper.launch.process import boot_id, group_members, process_identity, start_time, stop_group, stop_pids
from wrapper.launch.progress import Progress, TrainerLog

POLL_SECONDS = 0.1
CANCEL_GRACE_SECONDS = 15.0


@dataclass
class RunResult:
    meta: runs.RunMeta
    progress: Progress
    adapter: Path | None  # output_dir when it holds an adapter or model
    loss_plot: Path | None


def prepare_resume(run_dir: Path) -> Path:
    """Point the run's config at its last checkpoint and queue it again.

    Refused while the run is active (its lock is held) or queued: of two concurrent --resume, the
    second finds the run queued by the first, because the check and the change happen under the lock.
    """
    with runs.try_run_lock(run_dir, "resume it"):
        return _prepare_resume(run_dir)


def _prepare_resume(run_dir: Path) -> Path:
    meta = refresh(run_dir)
    if meta.status in ("queued", "running"):
        raise RunError(f"Run {meta.name!r} is {meta.status}; wait, or `lfwrap runs cancel {meta.name}`.")
    checkpoint = runs.last_checkpoint(Path(meta.output_dir))
    if checkpoint is None:
        raise RunError(
            f"Run {meta.name!r} has no checkpoint-N folder in {meta.output_dir} to resume from; "
            "save checkpoints with --set save_steps=N, or start a new run."
        )
    config = read_config(run_dir)
    if meta.backend == "docker":
        config["resume_from_checkpoint"] = f"{config['output_dir'].rstrip('/')}/{checkpoint.name}"
    else:
        config["resume_from_checkpoint"] = str(checkpoint)
    write_config(run_dir, config)
    runs.write_meta(
        run_dir,
        meta.updated(
            status="queued", exit_code=None, ended=None, error=[], pid=None, pgid=None, supervisor=None
        ),
    )
    return checkpoint


def launch(run_dir: Path) -> subprocess.Popen[bytes]:
    """Start the supervisor for a queued run in a new session; it records the run's status."""
    meta = runs.read_meta(run_dir)
    if meta.backend == "local":  # fail here, in the caller, when a needed package is missing
        check_extras(read_config(run_dir), meta.env, llamafactory_cli())
    with (run_dir / "supervisor.log").open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "wrapper.launch.supervisor", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # the supervisor records the same itself when it starts; whichever comes first, cancel can verify it
    identity = process_identity(child.pid)
    runs.update_meta(run_dir, pid=child.pid, pgid=child.pid, supervisor=identity)
    return child


def _lost(meta: runs.RunMeta) -> bool:
    """An unfinished run whose supervisor (recorded, or started) is not running any more."""
    started = meta.status == "running" or meta.pid is not None or meta.supervisor is not None
    return meta.status in ("queued", "running") and started and not runs.supervisor_alive(meta)


def refresh(run_dir: Path, check_group: bool = True) -> runs.RunMeta:
    """The run's meta, marking it failed ("lost") when its supervisor is gone without recording an end:
    killed, crashed, or the machine rebooted (`check_group`: look, a read of /proc/PID/stat). The log
    is kept; nothing is signalled."""
    meta = runs.read_meta(run_dir)
    if check_group and _lost(meta):
        time.sleep(POLL_SECONDS)  # it may be writing its end right now
        meta = runs.read_meta(run_dir)
        if _lost(meta):
            pid = (meta.supervisor or {}).get("pid", meta.pid)
            meta = runs.update_meta(
                run_dir,
                status="failed",
                ended=runs.now(),
                error=[
                    f"{runs.LOST} (pid {pid} ended, or is another process now) without recording a "
                    f"result; its log is {run_dir / runs.LOG_FILE}."
                ],
            )
    return meta


def follow(
    run_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> RunResult:
    """Wait for the run to finish, calling `on_progress` as trainer_log.jsonl grows; the result."""
    reader = TrainerLog(Path(runs.read_meta(run_dir).output_dir) / runs.TRAINER_LOG)
    last: tuple[int, int] | None = None
    polls = 0
    while True:
        if process is not None:
            process.poll()
        # The supervisor records the end itself; looking for a vanished one costs a /proc scan, so
        # only when it has exited (our child) or, for someone else's run, every few seconds.
        polls += 1
        gone = process.returncode is not None if process is not None else polls % 25 == 0
        meta = refresh(run_dir, check_group=gone)
        progress = reader.poll()
        if on_progress is not None and (progress.step, progress.total) != last:
            last = (progress.step, progress.total)
            on_progress(progress)
        if meta.status in runs.FINISHED:
            break
        if meta.status == "queued" and process is not None and process.returncode is not None:
            raise LaunchError(f"The run's supervisor exited at once; see {run_dir / 'supervisor.log'}.")
        if process is not None and process.returncode is None:
            try:  # wakes as soon as the supervisor exits, right after it recorded the end
                process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(POLL_SECONDS)
    if process is not None:
        process.wait()
    return result(run_dir)


def result(run_dir: Path) -> RunResult:
    meta = runs.read_meta(run_dir)
    out = Path(meta.output_dir)
    progress = TrainerLog(out / runs.TRAINER_LOG).poll()
    has_weights = any((out / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))
    plot = out / "training_loss.png"
    return RunResult(meta, progress, out if has_weights else None, plot if plot.is_file() else None)


def cancel_run(run_dir: Path, grace: float = CANCEL_GRACE_SECONDS) -> runs.RunMeta:
    """Stop a queued or running run: SIGTERM its process group, SIGKILL after `grace`; status cancelled.

    The group is signalled only while the recorded supervisor is still that very process (pid, start
    time, boot id): a stale meta.json's group id may belong to an unrelated process now. A run whose
    supervisor is gone is marked lost (failed) instead, and nothing is signalled.
    """
    meta = runs.read_meta(run_dir)
    was_lost = _lost(meta)
    if meta.status in runs.FINISHED or was_lost:
        meta = refresh(run_dir)  # a lost run becomes failed ("lost") here
        leftovers = _leftovers(run_dir, meta)
        if leftovers:  # LLaMA-Factory outliving a killed supervisor, still holding the run's lock
            stop_pids(leftovers, grace)
            note = f"`lfwrap runs cancel` stopped {len(leftovers)} leftover process(es)."
            return runs.update_meta(run_dir, error=[*meta.error, note])
        if was_lost:
            return meta
        raise RunError(f"Run {meta.name!r} already ended ({meta.status}); nothing to cancel.")
    # the supervisor leads the group (own session): its verified pid is the only group id signalled
    if meta.pgid and meta.pgid == (meta.supervisor or {}).get("pid"):
        stop_group(meta.pgid, grace=grace, identity=meta.supervisor)
    meta = runs.read_meta(run_dir)
    if meta.status not in runs.FINISHED:
        meta = runs.update_meta(run_dir, status="cancelled", ended=runs.now())
    return meta


def _leftovers(run_dir: Path, meta: runs.RunMeta) -> list[int]:
    """Processes of an ended run that still run: only while the run's lock is held (so something of the
    run lives), on the supervisor's boot, in its process group, started after it."""
    lock = runs.RunLock(run_dir)
    if lock.acquire():
        lock.release()
        return []
    recorded = meta.supervisor or {}
    if not recorded or recorded.get("boot_id") != boot_id() or meta.pgid is None:
        return []
    if meta.pgid != recorded.get("pid"):
        return []
    found = []
    for pid in group_members(meta.pgid):
        started = start_time(pid)
        if started is not None and started >= recorded["start_time"]:
            found.append(pid)
    return found


def discard_run(run_dir: Path) -> None:
    """Remove a run directory that was only planned (--dry-run) or could not start."""
    shutil.rmtree(run_dir, ignore_errors=True)


def folder_size(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_run(run_dir: Path) -> Path | None:
    """Delete a finished run's folder; returns an output_dir outside it that was left in place.

    A queued or running run is refused (cancel it first), and so is one whose lock is still held (a
    LLaMA-Factory left running by a killed supervisor). Files a container wrote as root cannot be
    deleted by another user: the error says so instead of leaving a half-deleted run unexplained.
    """
    meta = refresh(run_dir)
    if meta.status not in runs.FINISHED:
        raise RunError(
            f"Run {meta.name!r} is {meta.status}; cancel it first with `lfwrap runs cancel {meta.name}`."
        )
    with runs.try_run_lock(run_dir, "remove it"):
        return _remove(run_dir, meta)


def _remove(run_dir: Path, meta: runs.RunMeta) -> Path | None:
    output = Path(meta.output_dir)
    outside = None if output.resolve().is_relative_to(run_dir.resolve()) else output

    failed: list[str] = []
    shutil.rmtree(run_dir, onerror=lambda _func, path, _exc: failed.append(path))
    if failed:
        raise RunError(
            f"Could not delete {len(failed)} path(s) of run {meta.name!r}, e.g. {failed[0]} (written as root "
            f"by a container?); remove {run_dir} with sudo, and use --as-me for docker runs."
        )
    from wrapper.launch.board_links import unlink_run

    unlink_run(meta.name)  # its entry in LLaMA Board's checkpoint list
    return outside
