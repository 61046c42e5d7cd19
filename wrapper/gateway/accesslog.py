"""One access-log line per request: request id, key id, model, status, latency, bytes.

Never the key itself, never message content. Lines go to the `lfwrap.gateway.access` logger.
"""

from __future__ import annotations

import logging

access = logging.getLogger("lfwrap.gateway.access")


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
) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info(
            "request_id=%s key_id=%s %s %s model=%s status=%d latency_ms=%.2f bytes_in=%d bytes_out=%d",
            request_id,
            key_id,
            method,
            path,
            model or "-",
            status,
            seconds * 1000.0,
            bytes_in,
            bytes_out,
        )
