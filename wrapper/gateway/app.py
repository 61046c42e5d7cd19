"""The gateway's ASGI app.

The two proxied endpoints (POST /v1/chat/completions, POST /v1/score/evaluation) run on a lean raw-ASGI
path: no routing framework, no request models, orjson, keep-alive upstream pools
(httpclient.py). Everything else
(/v1/models, /healthz, /readyz, /metrics, /docs) is a small FastAPI app behind it.
"""

from __future__ import annotations

import asyncio
import difflib
import gc
import itertools
import logging
import os
import time
from typing import Any

import orjson

from wrapper.gateway import accesslog
from wrapper.gateway.accesslog import log_request
from wrapper.gateway.checks import check_chat, check_score
from wrapper.gateway.httpclient import UpstreamError
from wrapper.gateway.keys import KeyCache, KeyRecord
from wrapper.gateway.limiter import QueueFull, QueueTimeout
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import SSE_HEADERS, ApiError, Headers, send_response
from wrapper.gateway.ratelimit import RateLimiter, retry_after_header
from wrapper.gateway.settings import GatewaySettings
from wrapper.gateway.sse import StreamRewriter
from wrapper.gateway.upstream import Upstream

log = logging.getLogger("lfwrap.gateway")

CHAT_PATH = "/v1/chat/completions"
SCORE_PATH = "/v1/score/evaluation"
_JSON_TYPE = (b"content-type", b"application/json")
_SAFE_ID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
# generated ids: 32 hex digits, a random per-process prefix and a counter (no syscall per request)
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _request_id(value: bytes | None) -> str:
    if value:
        text = value.decode("latin-1")
        if len(text) <= 128 and all(c in _SAFE_ID for c in text):
            return text
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _freeze_heap() -> None:
    """Move what exists now (modules, settings, the app) out of the collector's sight: the cycle
    collector's full passes then walk only what requests create. Called after the big one-time
    imports; garbage is collected first so none of it is kept for good."""
    gc.collect()
    gc.freeze()


def _quoted(text: str) -> str:
    """A caller-chosen string made safe for one log field: no spaces, line breaks or escapes."""
    return orjson.dumps(text[:128]).decode().replace(" ", "\\u0020")


class Disconnected(Exception):
    """The caller went away before the answer was complete."""


class Gateway:
    def __init__(self, settings: GatewaySettings, keys: KeyCache | None):
        if settings.auth == "keys" and keys is None:
            raise ValueError("auth 'keys' needs a key cache")
        self.settings = settings
        self.keys = keys if settings.auth == "keys" else None
        self.metrics = Metrics()
        self.rate = RateLimiter()
        self.upstreams = {route.name: Upstream(route, self.metrics) for route in settings.models}
        self.running = False
        self._flusher: asyncio.Future[None] | None = None
        self.started = time.time()
        self._small: Any = None
        self._in_flight: set[asyncio.Task[Any] | None] = set()

    # ---- ASGI entry -------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            task = asyncio.current_task()
            self._in_flight.add(task)
            try:
                await self._http(scope, receive, send)
            finally:
                self._in_flight.discard(task)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        url_bytes = len(scope.get("raw_path") or path) + len(scope.get("query_string") or b"")
        if url_bytes > self.settings.max_url_bytes:  # the server itself only bounds the header block
            failure = ApiError(
                414,
                f"The URL is {url_bytes} bytes; this gateway accepts at most {self.settings.max_url_bytes}.",
                code="uri_too_long",
            )
            await send_response(send, 414, failure.body(), [*failure.headers(), (b"connection", b"close")])
            return
        if path == CHAT_PATH or path == SCORE_PATH:
            await self._proxy(scope, receive, send, path)
            return
        if self._small is None:
            from wrapper.gateway.small import build_small_app  # FastAPI: imported on first use

            self._small = build_small_app(self)
            _freeze_heap()
        await self._small(scope, receive, send)

    def metrics_text(self) -> str:
        """The Prometheus exposition of this gateway's counters."""
        return self.metrics.render()

    def cancel_in_flight(self) -> int:
        """Cancel every request still running (shutdown past shutdown_timeout); returns how many."""
        tasks = [task for task in self._in_flight if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        self.running = True
        _freeze_heap()
        self._flusher = asyncio.ensure_future(self._flush_logs())

    async def shutdown(self) -> None:
        self.running = False
        if self._flusher is not None:
            self._flusher.cancel()
        accesslog.flush()
        for upstream in self.upstreams.values():
            upstream.close()

    async def _flush_logs(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every_s)
            accesslog.flush()

    # ---- shared checks ----------------------------------------------------------------------------
    def authenticate(self, authorization: bytes | None) -> KeyRecord | None:
        """The caller's key record; None when the gateway runs open. Raises 401."""
        if self.keys is None:
            return None
        if not authorization:
            raise ApiError(
                401,
                "Missing API key: send it as 'Authorization: Bearer <key>' (create one with "
                "`lfwrap keys create`).",
                code="invalid_api_key",
            )
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        record = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if record is None:
            if len(self.keys) == 0:
                raise ApiError(
                    401,
                    "This gateway has no API keys yet: create one with `lfwrap keys create` "
                    "and send it as 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                )
            raise ApiError(
                401,
                "Invalid API key: it is unknown or revoked; see `lfwrap keys list`.",
                code="invalid_api_key",
            )
        return record

    def upstream_for(self, model: str, record: KeyRecord | None) -> Upstream:
        upstream = self.upstreams.get(model)
        if upstream is None:
            close = difflib.get_close_matches(model, list(self.upstreams), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ApiError(
                404,
                f"The model {model!r} does not exist on this gateway; GET /v1/models lists the models.{hint}",
                code="model_not_found",
                param="model",
            )
        if record is not None and not record.allows(model):
            raise ApiError(
                403,
                f"This API key (id {record.key_id}) may not use model {model!r}; it may use "
                f"{', '.join(record.models or ())}.",
                code="model_not_allowed",
                param="model",
            )
        return upstream

    def visible_models(self, record: KeyRecord | None) -> list[str]:
        return [name for name in self.upstreams if record is None or record.allows(name)]

    async def _read_body(self, receive: Any, declared: int | None) -> bytes:
        # a body that trickles in holds a connection slot: the whole body gets body_timeout seconds
        # (a timer that cancels this task, as asyncio.timeout does on 3.11+)
        timeout = self.settings.body_timeout
        task = asyncio.current_task()
        assert task is not None
        expired = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await self._read_body_now(receive, declared)
        except asyncio.CancelledError:
            if not expired:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise ApiError(
                408,
                f"The request body did not arrive within {timeout:g} s (body_timeout).",
                code="request_timeout",
            ) from None
        finally:
            timer.cancel()

    async def _read_body_now(self, receive: Any, declared: int | None) -> bytes:
        limit = self.settings.max_body_bytes
        if declared is not None and declared > limit:
            raise ApiError(
                413,
                f"The request body is {declared} bytes; this gateway accepts at most {limit} "
                "(max_body_bytes).",
                code="request_too_large",
            )
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):  # the usual case
            body: bytes = message.get("body", b"")
            if len(body) <= limit:
                return body
        chunks = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    f"The request body is over {limit} bytes, the most this gateway accepts "
                    "(max_body_bytes).",
                    code="request_too_large",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            message = await receive()

    # ---- the hot path -----------------------------------------------------------------------------
    async def _proxy(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        start = time.perf_counter()
        authorization = request_id_raw = length_raw = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                request_id_raw = value
            elif name == b"content-length":
                length_raw = value
        request_id = _request_id(request_id_raw)
        id_header = (b"x-request-id", request_id.encode())
        key_id = "-"
        model = ""
        status = 500
        bytes_in = 0
        sent = [0]
        try:
            if scope["method"] != "POST":
                raise ApiError(405, f"{path} takes POST.", code="method_not_allowed")
            record = self.authenticate(authorization)
            if record is not None:
                key_id = record.key_id
            declared = int(length_raw) if length_raw and length_raw.isdigit() else None
            body = await self._read_body(receive, declared)
            bytes_in = len(body)
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400, f"The request body is not valid JSON ({exc}).", code="invalid_json"
                ) from None
            if path == CHAT_PATH:
                model, stream, include_usage = check_chat(data)
            else:
                model, stream, include_usage = check_score(data), False, False
            upstream = self.upstream_for(model, record)
            if record is not None and record.rpm is not None:
                wait = self.rate.hit(record.key_id, record.rpm)
                if wait:
                    raise ApiError(
                        429,
                        f"Rate limit reached for API key {record.key_id}: {record.rpm} requests per minute.",
                        code="rate_limit_exceeded",
                        retry_after=retry_after_header(wait),
                    )
            status = await self._guarded(
                upstream, path, body, data, stream, include_usage, request_id, id_header, receive, send, sent
            )
        except ApiError as err:
            status = err.status
            payload = err.body()
            await send_response(send, status, payload, [*err.headers(), id_header])
            sent[0] = len(payload)
        except Disconnected:
            status = 499  # nginx's "client closed request"
        except Exception:
            status = 500
            log.exception("request %s: unexpected error in the gateway", request_id)
            failure = ApiError(
                500,
                f"The gateway failed on this request (id {request_id}); see its log.",
                code="internal_error",
            )
            try:
                await send_response(send, 500, failure.body(), [*failure.headers(), id_header])
            except RuntimeError:
                pass  # the answer had started: the connection ends here
        finally:
            elapsed = time.perf_counter() - start
            # only configured names become labels or log fields as-is: callers choose what `model` says
            known = model in self.upstreams
            self.metrics.observe(model if known else "-", status, elapsed)
            if not known and model:
                model = _quoted(model)
            if self.settings.access_log:
                log_request(
                    request_id, key_id, scope["method"], path, model, status, elapsed, bytes_in, sent[0]
                )

    async def _guarded(
        self,
        upstream: Upstream,
        path: str,
        body: bytes,
        data: dict[str, Any],
        stream: bool,
        include_usage: bool,
        request_id: str,
        id_header: tuple[bytes, bytes],
        receive: Any,
        send: Any,
        sent: list[int],
    ) -> int:
        """Take a slot (or queue for one) and forward; a caller who disconnects while queued or streaming
        cancels everything at once, closing the upstream request."""
        limiter = upstream.limiter
        acquired = limiter.try_acquire()
        if acquired and not stream:  # fast path: nothing to wait for but the upstream's answer
            try:
                return await self._forward_plain(
                    upstream, path, body, data["model"], request_id, id_header, send, sent
                )
            finally:
                limiter.release()
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            if not acquired:
                try:
                    await limiter.acquire(upstream.route.queue_timeout)
                except QueueFull:
                    raise ApiError(
                        429,
                        f"Model {upstream.name!r} is busy: {limiter.max_queue} requests are "
                        "already waiting; retry shortly.",
                        code="queue_full",
                        retry_after="1",
                    ) from None
                except QueueTimeout:
                    raise ApiError(
                        503,
                        f"Model {upstream.name!r} is busy: no slot freed within "
                        f"{upstream.route.queue_timeout:g} s (queue_timeout).",
                        code="queue_timeout",
                        retry_after=RETRY_BUSY,
                    ) from None
            try:
                if stream:
                    return await self._forward_stream(
                        upstream, path, body, data, include_usage, request_id, id_header, send, sent
                    )
                return await self._forward_plain(
                    upstream, path, body, data["model"], request_id, id_header, send, sent
                )
            finally:
                limiter.release()
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+
                task.uncancel()
            raise Disconnected from None
        finally:
            watcher.cancel()

    async def _forward_plain(
        self,
        upstream: Upstream,
        path: str,
        body: bytes,
        model: str,
        request_id: str,
        id_header: tuple[bytes, bytes],
        send: Any,
        sent: list[int],
    ) -> int:
        resp = await upstream.post(path, body, request_id)
        try:
            if resp.status != 200:
                raise await upstream.error_from(resp)
            try:
                raw = await resp.read()
            except UpstreamError as exc:
                raise upstream.failure(exc, started=True) from None
        finally:
            resp.close()
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            upstream.metrics.upstream_error(upstream.name, "protocol")
            raise ApiError(
                502,
                f"Model {model!r}: the upstream answered something that is not JSON.",
                code="bad_upstream_response",
            ) from None
        if isinstance(answer, dict) and "model" in answer:
            answer["model"] = model
        out = orjson.dumps(answer)
        sent[0] = len(out)
        headers = [_JSON_TYPE, id_header, (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        return 200

    async def _forward_stream(
        self,
        upstream: Upstream,
        path: str,
        body: bytes,
        data: dict[str, Any],
        include_usage: bool,
        request_id: str,
        id_header: tuple[bytes, bytes],
        send: Any,
        sent: list[int],
    ) -> int:
        resp = await upstream.post(path, body, request_id)
        if resp.status != 200:
            raise await upstream.error_from(resp)
        rewrite = StreamRewriter(data["model"], include_usage)
        headers: Headers = [*SSE_HEADERS, id_header]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        buffer = b""
        try:
            async for piece in resp.pieces():
                buffer += piece
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, buffer = buffer[: end + 2], buffer[end + 2 :]
                out = rewrite.events(complete)
                if out:
                    sent[0] += len(out)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if not rewrite.done:
                raise UpstreamError("protocol", "the upstream ended the stream before [DONE]")
            if include_usage:
                usage = upstream.counter.usage(data["messages"], rewrite.text(), rewrite.chunks)
                tail = rewrite.usage_chunk(usage) + b"data: [DONE]\n\n"
                sent[0] += len(tail)
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        except UpstreamError as exc:
            err = upstream.failure(exc, started=True)
            out = (
                b"data: "
                + orjson.dumps(
                    {
                        "error": {
                            **err.payload()["error"],
                            "code": "upstream_stream_error",
                            "message": f"The stream broke off: {err.message}",
                        }
                    }
                )
                + b"\n\n"
            )
            sent[0] += len(out)
            await send({"type": "http.response.body", "body": out, "more_body": True})
        finally:
            resp.close()  # unless read to the end: drop the connection, the upstream request ends now
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200


RETRY_BUSY = "2"
