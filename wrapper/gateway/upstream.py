"""The upstream side: per-route connection pools, the queue in front of them (slot()), request
forwarding and the mapping of failures to OpenAI errors (503 down, 504 timeout, 502 bad answer;
FastAPI's {"detail": ...} translated). Client-facing messages name the model, never the upstream's
address: that goes to the gateway's own log."""

from __future__ import annotations

import logging

import orjson

from wrapper.gateway.httpclient import (
    Pool,
    Response,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from wrapper.gateway.limiter import Limiter, QueueFull, QueueTimeout
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import ApiError
from wrapper.gateway.settings import ModelRoute
from wrapper.gateway.usage import TokenCounter

log = logging.getLogger("lfwrap.gateway")

RETRY_AFTER_DOWN = "5"
RETRY_BUSY = "2"


class _Slot:
    __slots__ = ("upstream",)

    def __init__(self, upstream: Upstream):
        self.upstream = upstream

    async def __aenter__(self) -> None:
        if not self.upstream.limiter.try_acquire():
            await self.upstream._queue()  # raises when no slot comes: then there is nothing to release

    async def __aexit__(self, *exc: object) -> None:
        self.upstream.limiter.release()


class Upstream:
    """One route: where it goes, how many requests may be in flight, how to count its tokens."""

    def __init__(self, route: ModelRoute, metrics: Metrics):
        self.route = route
        self.name = route.name
        self.metrics = metrics
        self.limiter = Limiter(route.max_concurrency, route.max_queue)
        self.counter = TokenCounter(route.name, route.tokenizer)
        self.pool = Pool(route.upstream, route.connect_timeout)
        self._auth: dict[str, str] = {}
        if route.upstream_key is not None:
            self._auth = {"Authorization": f"Bearer {route.upstream_key.get_secret_value()}"}
        metrics.gauges[route.name] = (lambda: self.limiter.in_flight, lambda: self.limiter.queued)
        self._slot = _Slot(self)

    def slot(self) -> _Slot:
        """`async with upstream.slot():` holds one of max_concurrency slots, queueing (FIFO, bounded)
        for one when all are taken. A plain context manager: a generator-based one costs more per request."""
        return self._slot

    async def _queue(self) -> None:
        """Wait in the queue for a slot; 429 when the queue is full, 503 past queue_timeout."""
        limiter = self.limiter
        try:
            await limiter.acquire(self.route.queue_timeout)
        except QueueFull:
            raise ApiError(
                429,
                f"Model {self.name!r} is busy: {limiter.max_queue} requests are already waiting; "
                "retry shortly.",
                code="queue_full",
                retry_after="1",
            ) from None
        except QueueTimeout:
            raise ApiError(
                503,
                f"Model {self.name!r} is busy: no slot freed within {self.route.queue_timeout:g} s "
                "(queue_timeout).",
                code="queue_timeout",
                retry_after=RETRY_BUSY,
            ) from None

    def failure(self, exc: UpstreamError, *, started: bool = False, request_id: str = "-") -> ApiError:
        """The OpenAI error for a failed exchange with this upstream (counted, and logged with the
        upstream's address, which callers never see)."""
        self.metrics.upstream_error(self.name, exc.kind)
        log.warning(
            "request %s: model %s: upstream %s: %s: %s",
            request_id,
            self.name,
            self.route.upstream,
            exc.kind,
            exc,
        )
        where = f"Model {self.name!r}: the upstream server"
        if isinstance(exc, UpstreamConnectError) and not started:
            return ApiError(
                503,
                f"{where} does not answer; retry later (the gateway's log has the details).",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER_DOWN,
            )
        if isinstance(exc, UpstreamTimeout):
            return ApiError(
                504,
                f"{where} timed out: {exc} (connect_timeout {self.route.connect_timeout:g} s, "
                f"read_timeout {self.route.read_timeout:g} s).",
                code="upstream_timeout",
            )
        if isinstance(exc, UpstreamTooLarge):
            return ApiError(502, f"{where} answered too much: {exc}.", code="upstream_too_large")
        return ApiError(502, f"{where} gave a broken answer: {exc}.", code="bad_upstream_response")

    async def post(self, path: str, body: bytes, request_id: str) -> Response:
        extra = {"Content-Type": "application/json", "x-request-id": request_id, **self._auth}
        try:
            return await self.pool.request("POST", path, body, extra, self.route.read_timeout)
        except UpstreamError as exc:
            raise self.failure(exc, request_id=request_id) from None

    async def read(self, resp: Response, limit: int, request_id: str) -> bytes:
        """A whole answer, at most `limit` bytes (502 above it)."""
        try:
            return await resp.read(limit)
        except UpstreamError as exc:
            raise self.failure(exc, started=True, request_id=request_id) from None
        finally:
            resp.close()

    async def error_from(self, resp: Response) -> ApiError:
        """Translate a non-200 upstream answer (FastAPI's {"detail": ...}) into an OpenAI error."""
        try:
            raw = await resp.read(1 << 20)
        except UpstreamError:
            raw = b""
        finally:
            resp.close()
        detail: object = raw.decode("utf-8", "replace")[:500]
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict):
                if "detail" in parsed:
                    detail = parsed["detail"]
                elif isinstance(parsed.get("error"), dict):
                    detail = parsed["error"].get("message", detail)
        except orjson.JSONDecodeError:
            pass
        if not isinstance(detail, str):
            detail = orjson.dumps(detail).decode()
        status = resp.status
        self.metrics.upstream_error(self.name, f"http_{status}")
        if status in (400, 404, 413, 422):
            return ApiError(
                400, f"Model {self.name!r} rejected the request: {detail}", code="upstream_rejected"
            )
        if status in (401, 403):
            log.warning(
                "model %s: upstream %s answered %d to the gateway's upstream_key",
                self.name,
                self.route.upstream,
                status,
            )
            return ApiError(
                502,
                f"The upstream server of model {self.name!r} refused the gateway's credentials; "
                "its operator must set upstream_key to the server's API_KEY.",
                code="upstream_auth",
            )
        if status == 429:
            return ApiError(
                429,
                f"Model {self.name!r} is busy upstream: {detail}",
                code="upstream_busy",
                retry_after=resp.headers.get("retry-after", "1"),
            )
        if status == 503:
            return ApiError(
                503,
                f"Model {self.name!r} is unavailable upstream: {detail}",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER_DOWN,
            )
        return ApiError(
            502,
            f"Model {self.name!r}: the upstream server answered {status}: {detail}",
            code="bad_upstream_response",
        )

    async def ready(self, timeout: float = 2.0) -> str | None:
        """None when the upstream lists its models, else why not."""
        try:
            resp = await self.pool.request("GET", "/v1/models", b"", self._auth, timeout)
            try:
                await resp.read(1 << 20)
            finally:
                resp.close()
        except UpstreamError as exc:
            return f"{exc.kind}: {exc}"
        return None if resp.status == 200 else f"GET /v1/models answered {resp.status}"

    async def aclose(self) -> None:
        await self.pool.aclose()
