"""OpenAI's error object and the few raw-ASGI response helpers the gateway uses.

Every failure the gateway answers has the shape {"error": {"message", "type", "param", "code"}},
so the official SDKs raise the matching exception (AuthenticationError, NotFoundError, ...).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson

Headers = list[tuple[bytes, bytes]]

_SAFE_ID = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
# generated ids: 32 hex digits, a random per-process prefix and a counter (no syscall per request)
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def request_id(value: bytes | None) -> str:
    """The caller's x-request-id when it is short and plain (<= 128 of [A-Za-z0-9-_.:]), else a new one:
    it is echoed in headers and written to logs."""
    if value and len(value) <= 128 and all(c in _SAFE_ID for c in value):
        return value.decode("ascii")
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx and friends in front of us not to buffer
]

# status -> the OpenAI error type it carries
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """A failure answered to the caller as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        type_: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.type = type_ or ERROR_TYPES.get(status, "server_error")

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def headers(self) -> Headers:
        headers = list(JSON_HEADERS)
        if self.retry_after is not None:
            headers.append((b"retry-after", self.retry_after.encode()))
        return headers


async def send_response(send: Any, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def model_not_allowed(key_id: str, model: str, models: tuple[str, ...] | None) -> ApiError:
    """403 for a key limited to other models (configured routes and ft: models alike)."""
    return ApiError(
        403,
        f"This API key (id {key_id}) may not use model {model!r}; it may use {', '.join(models or ())}.",
        code="model_not_allowed",
        param="model",
    )


def body_too_large(limit: int) -> ApiError:
    """413 for a body that grew past max_body_bytes while it arrived."""
    return ApiError(
        413,
        f"The request body is over {limit} bytes, the most this gateway accepts (max_body_bytes).",
        code="request_too_large",
    )
