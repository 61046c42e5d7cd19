"""The gateway's ASGI app.

The two proxied endpoints (POST /v1/chat/completions, POST /v1/score/evaluation) run on a lean raw-ASGI
path: no routing framework, no request models, orjson, keep-alive upstream pools (httpclient.py).
Everything else (/v1/models, /healthz, /readyz, /metrics, /docs) is a small FastAPI app behind it
(small.py, which sees the gateway only through the few methods it calls).

Order on the hot path, cheapest refusal first: URL length, method, key, rate limit, body (size and
time), JSON, request checks (model name length included), route, queue slot, upstream.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from wrapper.gateway import accesslog, grounding
from wrapper.gateway.accesslog import log_request
from wrapper.gateway.checks import check_chat, check_score
from wrapper.gateway.httpclient import UpstreamError, UpstreamProtocolError
from wrapper.gateway.keys import KeyCache, KeyRecord
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import (
    SSE_HEADERS,
    ApiError,
    Headers,
    body_too_large,
    model_not_allowed,
    request_id,
    send_response,
)
from wrapper.gateway.ratelimit import RateLimiter, retry_after_header
from wrapper.gateway.settings import GatewaySettings
from wrapper.gateway.sse import StreamRewriter
from wrapper.gateway.upstream import Upstream
from wrapper.suggest import SENTENCE, did_you_mean

log = logging.getLogger("lfwrap.gateway")

CHAT_PATH = "/v1/chat/completions"
SCORE_PATH = "/v1/score/evaluation"
OPS_PATHS = frozenset({"/metrics", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_JSON_TYPE = (b"content-type", b"application/json")


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


@dataclass(slots=True)
class Call:
    """One proxied request: what it asks, and what the access log and metrics record about it."""

    receive: Any
    send: Any
    task: asyncio.Task[Any]  # the request's task (looked up once: each lookup costs a getpid() on 3.11)
    path: str
    method: str
    request_id: str
    id_header: tuple[bytes, bytes]
    start: float = field(default_factory=time.perf_counter)
    key_id: str = "-"
    model: str = ""
    status: int = 500
    bytes_in: int = 0
    bytes_out: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    stream: bool = False
    include_usage: bool = False
    headers: Any = ()  # the request's raw headers (scope["headers"])
    rag: Any = None  # retrieval on a rag route (grounding.py): Grounded, "off" (opted out), or None


class Gateway:
    def __init__(self, settings: GatewaySettings, keys: KeyCache | None):
        if settings.auth == "keys" and keys is None:
            raise ValueError("auth 'keys' needs a key cache")
        self.settings = settings
        self.keys = keys if settings.auth == "keys" else None
        self.metrics = Metrics()
        self.rate = RateLimiter()
        self.upstreams = {route.name: Upstream(route, self.metrics) for route in settings.models}
        self.rag = grounding.RagRoutes(settings.models, self.metrics)  # opens indexes: fails here, not later
        self.finetune: Any = None  # /v1/files, /v1/fine_tuning/jobs and ft: models (finetune_service.py)
        if settings.fine_tuning is not None:
            from wrapper.gateway.finetune_service import FineTuning

            self.finetune = FineTuning(settings.fine_tuning, self.metrics)  # opens its store: fails here
        self.running = False
        self._flusher: asyncio.Future[None] | None = None
        self.started = time.time()
        self._small: Any = None
        self._in_flight: set[asyncio.Task[Any] | None] = set()

    # ---- ASGI entry -------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                await self._http(scope, receive, send, task)
            finally:
                self._in_flight.discard(task)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any, task: asyncio.Task[Any]) -> None:
        path = scope["path"]
        authorization = rid_raw = length_raw = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                rid_raw = value
            elif name == b"content-length":
                length_raw = value
        rid = request_id(rid_raw)
        id_header = (b"x-request-id", rid.encode())
        url_bytes = len(scope.get("raw_path") or path) + len(scope.get("query_string") or b"")
        if url_bytes > self.settings.max_url_bytes:  # the server itself only bounds the header block
            failure = ApiError(
                414,
                f"The URL is {url_bytes} bytes; this gateway accepts at most {self.settings.max_url_bytes}.",
                code="uri_too_long",
            )
            await send_response(send, 414, failure.body(), [*failure.headers(), id_header])
            return
        if path == CHAT_PATH or path == SCORE_PATH:
            call = Call(receive, send, task, path, scope["method"], rid, id_header, headers=scope["headers"])
            await self._proxy(call, authorization, length_raw)
            return
        if self.settings.ops_need_key and path in OPS_PATHS:
            try:
                await self.authenticate(authorization)
            except ApiError as err:
                await send_response(send, err.status, err.body(), [*err.headers(), id_header])
                return
        if self._small is None:
            from wrapper.gateway.small import build_small_app  # FastAPI: imported on first use

            self._small = build_small_app(self)
            _freeze_heap()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":  # the sanitised id, never the caller's raw one
                kept = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*kept, id_header]
            await send(message)

        await self._small(scope, receive, send_with_id)

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
        if self.finetune is not None:
            await self.finetune.start()
        self.running = True
        _freeze_heap()
        self._flusher = asyncio.ensure_future(self._flush_logs())

    async def shutdown(self) -> None:
        self.running = False
        if self._flusher is not None:
            self._flusher.cancel()
        accesslog.flush()
        if self.finetune is not None:
            await self.finetune.stop()  # stops every model server it started
        for upstream in self.upstreams.values():
            await upstream.aclose()

    async def _flush_logs(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every_s)
            accesslog.flush()

    def cancel_in_flight(self) -> int:
        """Cancel every request still running (shutdown past shutdown_timeout); returns how many."""
        tasks = [task for task in self._in_flight if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    # ---- what the small endpoints and operators ask -----------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, model -> "ok" or why not): ready when every upstream lists its models."""
        names = list(self.upstreams)
        results = await asyncio.gather(*(self.upstreams[n].ready() for n in names))
        upstreams = {name: (problem or "ok") for name, problem in zip(names, results, strict=True)}
        configured = bool(names) or self.finetune is not None
        return configured and all(problem is None for problem in results), upstreams

    async def rag_search(
        self, index: str, request: grounding.SearchRequest, authorization: bytes | None
    ) -> grounding.SearchAnswer:
        record = await self.authenticate(authorization)
        self.check_rate(record)
        return await self.rag.search(index, request, record)

    def metrics_text(self) -> str:
        """The Prometheus exposition of this gateway's counters."""
        return self.metrics.render()

    # ---- shared checks ----------------------------------------------------------------------------
    async def authenticate(self, authorization: bytes | None) -> KeyRecord | None:
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
        key = key.strip()
        bearer = scheme.lower() == "bearer" and 0 < len(key) <= 256
        await self.keys.refresh(join=False)  # picks up `lfwrap keys` changes; never blocks for long
        record = self.keys.lookup(key) if bearer else None
        if record is None and bearer:
            await self.keys.refresh()  # a key created a moment ago: wait for a read under way
            record = self.keys.lookup(key)
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

    def check_rate(self, record: KeyRecord | None) -> None:
        if record is not None and record.rpm is not None:
            wait = self.rate.hit(record.key_id, record.rpm)
            if wait:
                raise ApiError(
                    429,
                    f"Rate limit reached for API key {record.key_id}: {record.rpm} requests per minute.",
                    code="rate_limit_exceeded",
                    retry_after=retry_after_header(wait),
                )

    def upstream_for(self, model: str, record: KeyRecord | None) -> Upstream:
        upstream = self.upstreams.get(model)
        if upstream is None:
            hint = did_you_mean(model, self.upstreams, SENTENCE)  # model <= 128 chars
            raise ApiError(
                404,
                f"The model {model!r} does not exist on this gateway; GET /v1/models lists the models.{hint}",
                code="model_not_found",
                param="model",
            )
        if record is not None and not record.allows(model):
            raise model_not_allowed(record.key_id, model, record.models)
        return upstream

    def visible_models(self, record: KeyRecord | None) -> list[str]:
        names = [name for name in self.upstreams if record is None or record.allows(name)]
        return names + self.finetune.models(record) if self.finetune is not None else names

    async def _read_body(self, call: Call, declared: int | None) -> bytes:
        # a body that trickles in holds a connection slot: the whole body gets body_timeout seconds
        reading = self._read_body_now(call.receive, declared)
        return await _within(call.task, reading, self.settings.body_timeout, self._slow_body)

    def _slow_body(self) -> ApiError:
        return ApiError(
            408,
            f"The request body did not arrive within {self.settings.body_timeout:g} s (body_timeout).",
            code="request_timeout",
        )

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
                raise body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            message = await receive()

    # ---- the hot path -----------------------------------------------------------------------------
    async def _proxy(self, call: Call, authorization: bytes | None, length_raw: bytes | None) -> None:
        try:
            if call.method != "POST":
                raise ApiError(405, f"{call.path} takes POST.", code="method_not_allowed")
            record = await self.authenticate(authorization)
            if record is not None:
                call.key_id = record.key_id
            self.check_rate(record)  # right after the key: before any work on the body
            declared = int(length_raw) if length_raw and length_raw.isdigit() else None
            call.body = await self._read_body(call, declared)
            call.bytes_in = len(call.body)
            try:
                data = orjson.loads(call.body)
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400, f"The request body is not valid JSON ({exc}).", code="invalid_json"
                ) from None
            if call.path == CHAT_PATH:
                call.model, call.stream, call.include_usage = check_chat(data)
            else:
                call.model = check_score(data)
            call.data = data
            ft = self.finetune
            if ft is not None and call.model not in self.upstreams and ft.serves(call.model):
                async with ft.upstream(call.model, record) as pooled:  # started on demand
                    call.status = await self._guarded(call, pooled)
                return
            upstream = self.upstream_for(call.model, record)
            if call.model in self.rag and call.path == CHAT_PATH:
                await self.rag.ground(call)  # inline or in a thread by index size (grounding.py)
            call.status = await self._guarded(call, upstream)
        except ApiError as err:
            call.status = err.status
            payload = err.body()
            await send_response(call.send, err.status, payload, [*err.headers(), call.id_header])
            call.bytes_out = len(payload)
        except Disconnected:
            call.status = 499  # nginx's "client closed request"
        except Exception:
            call.status = 500
            log.exception("request %s: unexpected error in the gateway", call.request_id)
            failure = ApiError(
                500,
                f"The gateway failed on this request (id {call.request_id}); see its log.",
                code="internal_error",
            )
            try:
                await send_response(call.send, 500, failure.body(), [*failure.headers(), call.id_header])
            except Exception:
                pass  # the answer had started: the connection ends here
        finally:
            self._record(call)

    def _record(self, call: Call) -> None:
        elapsed = time.perf_counter() - call.start
        # only configured names become labels or log fields as-is: callers choose what `model` says
        model = call.model
        known = model in self.upstreams
        self.metrics.observe(model if known else "-", call.status, elapsed)
        if not known and model:
            model = _quoted(model)
        if self.settings.access_log:
            log_request(
                call.request_id,
                call.key_id,
                call.method,
                call.path,
                model,
                call.status,
                elapsed,
                call.bytes_in,
                call.bytes_out,
                grounding.log_field(call.rag),
            )

    async def _guarded(self, call: Call, upstream: Upstream) -> int:
        """Take a slot (or queue for one) and forward. A caller who disconnects at any point (queued,
        waiting for a plain answer, streaming) cancels everything at once: the upstream request is
        closed and the slot freed."""
        task = call.task
        watch = _DisconnectWatch(call.receive, task)
        try:
            async with upstream.slot():
                if call.stream:
                    return await self._forward_stream(call, upstream)
                return await self._forward_plain(call, upstream)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+
                task.uncancel()
            raise Disconnected from None
        finally:
            watch.stop()

    async def _forward_plain(self, call: Call, upstream: Upstream) -> int:
        resp = await upstream.post(call.path, call.body, call.request_id)
        if resp.status != 200:
            raise await upstream.error_from(resp)
        raw = await upstream.read(resp, self.settings.max_response_bytes, call.request_id)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            upstream.metrics.upstream_error(upstream.name, "protocol")
            raise ApiError(
                502,
                f"Model {call.model!r}: the upstream answered something that is not JSON.",
                code="bad_upstream_response",
            ) from None
        if isinstance(answer, dict) and "model" in answer:
            answer["model"] = call.model
        extra = grounding.sources_extra(call.rag)
        if extra and isinstance(answer, dict):
            answer.update(extra)
        out = orjson.dumps(answer)
        call.bytes_out = len(out)
        headers = [_JSON_TYPE, call.id_header, (b"content-length", b"%d" % len(out))]
        headers += grounding.sources_header(call.rag)
        await call.send({"type": "http.response.start", "status": 200, "headers": headers})
        await _within(
            call.task,
            call.send({"type": "http.response.body", "body": out}),
            self.settings.send_timeout,
            Disconnected,
        )  # a caller who stops reading is cut
        return 200

    async def _forward_stream(self, call: Call, upstream: Upstream) -> int:
        resp = await upstream.post(call.path, call.body, call.request_id)
        if resp.status != 200:
            raise await upstream.error_from(resp)
        send = call.send
        send_timeout = self.settings.send_timeout
        rewrite = StreamRewriter(call.model, call.include_usage, grounding.sources_extra(call.rag))
        headers: Headers = [*SSE_HEADERS, call.id_header, *grounding.sources_header(call.rag)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        buffer = b""
        try:
            async for piece in resp.pieces():
                buffer += piece
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    if len(buffer) > self.settings.max_response_bytes:
                        raise UpstreamProtocolError("an SSE event over max_response_bytes")
                    continue
                complete, buffer = buffer[: end + 2], buffer[end + 2 :]
                out = rewrite.events(complete)
                if out:
                    call.bytes_out += len(out)
                    message = {"type": "http.response.body", "body": out, "more_body": True}
                    await _within(call.task, send(message), send_timeout, Disconnected)
            if not rewrite.done:
                raise UpstreamProtocolError("the upstream ended the stream before [DONE]")
            if call.include_usage:
                usage = upstream.counter.usage(call.data["messages"], rewrite.text(), rewrite.chunks)
                tail = rewrite.usage_chunk(usage) + b"data: [DONE]\n\n"
                call.bytes_out += len(tail)
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        except UpstreamError as exc:
            out = _stream_error(upstream.failure(exc, started=True, request_id=call.request_id))
            call.bytes_out += len(out)
            await send({"type": "http.response.body", "body": out, "more_body": True})
        finally:
            resp.close()  # unless read to the end: drop the connection, the upstream request ends now
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200


class _DisconnectWatch:
    """Cancels `task` when the caller disconnects. A done-callback on the server's pending receive()
    rather than a watching task per request: granian's receive() hands back a future, so this costs
    one callback and no task (any other server's coroutine gets wrapped in a task, as before)."""

    __slots__ = ("receive", "task", "gone", "_pending")

    def __init__(self, receive: Any, task: asyncio.Task[Any]):
        self.receive = receive
        self.task = task
        self.gone = False
        self._pending: asyncio.Future[Any] | None = None
        self._arm()

    def _arm(self) -> None:
        pending = self._pending = asyncio.ensure_future(self.receive())
        pending.add_done_callback(self._message)

    def _message(self, pending: asyncio.Future[Any]) -> None:
        if pending is not self._pending or pending.cancelled() or pending.exception() is not None:
            return  # stopped, or the server failed the receive: nothing to watch any more
        if pending.result()["type"] == "http.disconnect":
            self.gone = True
            self.task.cancel()
        else:  # a late body message: keep listening
            self._arm()

    def stop(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()


async def _within(
    task: asyncio.Task[Any], step: Any, timeout: float, failure: Callable[[], BaseException]
) -> Any:
    """Await `step`, raising `failure()` after `timeout` s: a timer that cancels the running task, as
    asyncio.timeout does on 3.11+ (a task per wait would cost more on the hot path). The exception is
    made only when the time runs out."""
    expired = []

    def expire() -> None:
        expired.append(True)
        task.cancel()

    timer = task.get_loop().call_later(timeout, expire)
    try:
        return await step
    except asyncio.CancelledError:
        if not expired:
            raise
        if hasattr(task, "uncancel"):
            task.uncancel()
        raise failure() from None
    finally:
        timer.cancel()


def _stream_error(err: ApiError) -> bytes:
    """The SSE event that tells a streaming caller the stream broke off (the status was already 200)."""
    error = {**err.payload()["error"], "code": "upstream_stream_error"}
    error["message"] = f"The stream broke off: {err.message}"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
