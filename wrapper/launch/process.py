"""Process control: telling a process apart from a later one with the same pid, listing a process group,
and stopping processes, always the same way: SIGTERM, a grace period, then SIGKILL.

    stop_group(process)                          # a child leading its own group (start_new_session)
    stop_group(pid, identity=recorded)           # a recorded group leader, only while it is that process
    stop_pids([...])                             # single processes
    stop(send, alive)                            # anything else: how to signal it, how to tell it is gone

A pid or process group id alone can belong to an unrelated process after a crash or a reboot, so a
process lfwrap did not start in this very process is signalled only while its identity (pid, start time
from /proc/PID/stat, boot id) still matches the one recorded when it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
IDENTITY_KEYS = ("pid", "start_time", "boot_id")


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None when it is not
    running (or a zombie, which has finished)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is index 0
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_identity(pid: int) -> dict[str, Any] | None:
    """What tells process `pid` apart from a later one with the same pid; None when it is not running."""
    start = start_time(pid)
    if start is None:
        return None
    return {"pid": pid, "start_time": start, "boot_id": boot_id()}


def same_process(pid: int | None, identity: dict[str, Any] | None) -> bool:
    """Whether `pid` still is the process `identity` recorded (extra keys in `identity` are ignored)."""
    if not pid or not isinstance(identity, dict):
        return False
    now = process_identity(pid)
    return now is not None and all(now.get(key) == identity.get(key) for key in IDENTITY_KEYS)


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes in process group `pgid` (Linux /proc; elsewhere a kernel probe)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def stop(send: Callable[[int], None], alive: Callable[[], bool], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM through `send`, up to `grace` seconds for `alive()` to turn false, then SIGKILL and up to
    `grace` seconds more. `send` ignores targets that are already gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        send(sig)
        deadline = time.monotonic() + grace
        while alive():
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        else:
            return


def stop_group(
    group: int | subprocess.Popen[Any],
    *,
    grace: float = GRACE_SECONDS,
    identity: dict[str, Any] | None = None,
) -> None:
    """Stop a whole process group: `group` is its leader, our child (reaped afterwards) or a pid. With
    `identity`, nothing is signalled unless the leader still is that process."""
    child = group if isinstance(group, subprocess.Popen) else None
    pgid = group.pid if isinstance(group, subprocess.Popen) else group
    if identity is not None and not same_process(pgid, identity):
        return

    def send(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def alive() -> bool:
        if child is not None:
            child.poll()  # reap the leader as soon as it exits
        return group_alive(pgid)

    stop(send, alive, grace)
    if child is not None:
        child.wait()


def stop_pids(pids: Iterable[int], grace: float = GRACE_SECONDS) -> None:
    """Stop single processes (not their groups); the caller has checked they are the right ones."""
    targets = list(pids)

    def send(sig: int) -> None:
        for pid in targets:
            signal_pid(pid, sig)

    stop(send, lambda: any(start_time(pid) is not None for pid in targets), grace)


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C, so a foreground command stopped by a service manager or `timeout`
    still stops the process group it started instead of leaving it behind."""
    signal.signal(signal.SIGTERM, _interrupt)
