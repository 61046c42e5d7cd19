"""The supervisor: `python -m wrapper.launch.supervisor RUN_DIR`.

Started by `launch()` in a new session, so it leads the run's process group; LLaMA-Factory (or the
Docker client streaming the container's logs) runs under it. It writes the full output to
train.log, and records in meta.json when the run started, ended, how (succeeded / failed /
cancelled), its exit code and, on failure, the relevant error lines. Because it outlives the
command that started it, detached runs get their status recorded too.

SIGTERM or SIGINT cancel the run: the rest of the group gets SIGTERM, then SIGKILL after a grace
period; a container is stopped and removed. SIGHUP (the terminal that followed the run closed) is
ignored: the supervisor runs in its own session, so the run goes on and records its end as usual.

It holds the run's lock (.run.lock) for its whole life and passes it to LLaMA-Factory, so no second
writer (`--resume`, `runs remove`) starts while either lives. LLaMA-Factory killed by a signal
(SIGKILL from the kernel's OOM killer, say) makes the run failed, with the signal named.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from wrapper.launch import runs
from wrapper.launch.local import child_env, llamafactory_cli
from wrapper.launch.process import group_members, process_identity, signal_pid, stop
from wrapper.launch.progress import error_lines

GRACE_SECONDS = 10.0
LOCK_WAIT_SECONDS = 10.0  # the launcher releases the lock right after starting us
_KILL_HINT = " (by hand, or by the kernel's out-of-memory killer: see `dmesg`); the run stopped there."


class Cancelled(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Cancelled()


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the rest of our process group, then SIGKILL whatever is left after the grace period (the
    group is ours, but we stay out of it: SIGKILL cannot be ignored)."""
    me, group = os.getpid(), os.getpgid(0)

    def others() -> list[int]:
        return [pid for pid in group_members(group) if pid != me]

    def send(sig: int) -> None:
        for pid in others():
            signal_pid(pid, sig)

    def alive() -> bool:
        child.poll()
        return bool(others())

    stop(send, alive, GRACE_SECONDS)
    child.wait()


def _run_local(run_dir: Path, meta: runs.RunMeta, log: BinaryIO, lock: runs.RunLock) -> int:
    command = [llamafactory_cli(), *meta.command[1:]]
    child = subprocess.Popen(
        command,
        cwd=run_dir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(meta.env),
        pass_fds=(lock.fd,) if lock.fd is not None else (),  # the run stays locked while it lives
    )
    try:
        return child.wait()
    except Cancelled:
        _stop_group(child)
        raise


def _run_docker(run_dir: Path, meta: runs.RunMeta, log: BinaryIO, lock: runs.RunLock) -> int:
    from wrapper.launch.docker_backend import start_container
    from wrapper.launch.docker_paths import docker_setup

    options, mounts = docker_setup(meta)
    handle = start_container(
        run_dir=run_dir, command=meta.command, options=options, env=meta.env, mounts=mounts
    )
    runs.update_meta(run_dir, container_id=handle.id)

    def sink(chunk: bytes) -> None:
        log.write(chunk)
        log.flush()

    return handle.run(sink, stop_timeout=GRACE_SECONDS)


def supervise(run_dir: Path) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lock = runs.RunLock(run_dir)
    if not lock.acquire(timeout=LOCK_WAIT_SECONDS):
        runs.update_meta(
            run_dir,
            status="failed",
            ended=runs.now(),
            error=[f"Another process holds {lock.path}: the run is already being written; not started."],
        )
        return 1
    with lock:
        return _supervise(run_dir, lock)


def _supervise(run_dir: Path, lock: runs.RunLock) -> int:
    if runs.read_meta(run_dir).status != "queued":  # cancelled before it started: leave it so
        return 1
    meta = runs.update_meta(
        run_dir,
        status="running",
        started=runs.now(),
        pid=os.getpid(),
        pgid=os.getpgid(0),
        supervisor=process_identity(os.getpid()),
    )
    status: runs.Status = "failed"
    code: int | None = None
    error: list[str] = []
    with (run_dir / runs.LOG_FILE).open("ab") as log:
        try:
            runner = _run_docker if meta.backend == "docker" else _run_local
            code = runner(run_dir, meta, log, lock)
            status = "succeeded" if code == 0 else "failed"
            if code < 0:  # killed by a signal: say which, before the log's last lines
                name = signal.Signals(-code).name
                error = [f"LLaMA-Factory was killed by {name}" + (_KILL_HINT if name == "SIGKILL" else ".")]
                log.write(f"lfwrap: {error[0]}\n".encode())
        except Cancelled:
            status = "cancelled"
        except Exception as exc:  # a launch problem (engine unreachable, ...): recorded, not raised
            error = [str(exc)]
            log.write(f"lfwrap: {exc}\n".encode())
    if status == "failed" and (not error or code is not None and code < 0):
        text = (run_dir / runs.LOG_FILE).read_text(encoding="utf-8", errors="replace")
        error = error + (error_lines(text) or [f"LLaMA-Factory exited with status {code}."])
    runs.update_meta(run_dir, status=status, exit_code=code, ended=runs.now(), error=error)
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
