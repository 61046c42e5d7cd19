"""Start benchmark servers in their own processes and wait until they answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from wrapper.launch.process import stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    def __init__(
        self,
        name: str,
        cmd: list[str],
        ready_url: str,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    break
            except OSError as exc:
                code = getattr(exc, "code", None)
                if code is not None and code < 500:
                    break  # it answers (an auth error still means it is up)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc.send_signal, lambda: self.proc.poll() is None, grace=15)
        self.proc.wait()
        self.handle.close()


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
