"""One access-log line per request: request id, key id, model, status, latency, bytes, and for a
retrieval-augmented route `rag=` the ids of the chunks used (percent-encoded, comma-separated), or
`rag=off` when the caller opted out.

Never the key itself, never message content, never a chunk's text. Lines go to the
`lfwrap.gateway.access` logger. The server writes them through `BatchingHandler`: formatted at once,
written a batch at a time (at most `max_lines` or `flush_s` late), because one write per line
measurably costs throughput.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

access = logging.getLogger("lfwrap.gateway.access")

FORMAT = "%(asctime)s access %(message)s"
LINE = "request_id=%s key_id=%s %s %s model=%s status=%d latency_ms=%.2f bytes_in=%d bytes_out=%d"

_direct: BatchingHandler | None = None  # set by install(): lines skip LogRecord creation
_second = -1
_stamp = ""


def log_request(
    request_id: str,
    key_id: str,
    method: str,
    path: str,
    model: str,
    status: int,
    seconds: float,
    bytes_in: int,
    bytes_out: int,
    rag: str | None = None,
) -> None:
    global _second, _stamp
    tail = "" if rag is None else f" rag={rag or '-'}"
    if _direct is not None:  # the same line as FORMAT % LINE, built in one f-string
        now = time.time()
        second = int(now)
        if second != _second:
            _second, _stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        _direct.add(
            f"{_stamp},{int(now % 1 * 1000):03d} access request_id={request_id} key_id={key_id} {method} "
            f"{path} model={model or '-'} status={status} latency_ms={seconds * 1000.0:.2f} "
            f"bytes_in={bytes_in} bytes_out={bytes_out}{tail}"
        )
    elif access.isEnabledFor(logging.INFO):
        args = (request_id, key_id, method, path, model or "-", status, seconds * 1000.0, bytes_in, bytes_out)
        access.info(LINE + "%s", *args, tail)


class BatchingHandler(logging.StreamHandler):
    """A StreamHandler that writes lines in batches; call flush() regularly (the gateway does)."""

    def __init__(self, stream: TextIO | None = None, max_lines: int = 256):
        super().__init__(stream)
        self.max_lines = max_lines
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        self.acquire()
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        finally:
            self.release()


def install(stream: TextIO | None = None) -> BatchingHandler:
    """Send access lines to `stream` (stderr by default) in batches, formatted without LogRecords."""
    global _direct
    handler = _direct = BatchingHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    return handler


def flush() -> None:
    for handler in access.handlers:
        handler.flush()
