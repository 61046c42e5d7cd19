"""The upstream side: per-route connection pools, the queue in front of them (slot()), request
forwarding and the mapping of failures to OpenAI errors (503 down, 504 timeout, 502 bad answer;
FastAPI's {"detail": ...} translated). Client-facing messages name the model, never the upstream's
address: that goes to the gateway's own log.

Replicas: a route whose `upstream` lists several URLs sends each request to the replica with the
fewest requests in flight (ties taken in turn). A replica that refuses a connection, or gives none
within connect_timeout, leaves the rotation at once, and the request goes to the next replica
(nothing was sent, so nothing runs twice); every health_interval seconds a GET /v1/models asks the
replica again, and a 200 brings it back. Failures after the request was sent are not retried.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from wrapper.gateway.httpclient import (
    Pool,
    Response,
    UpstreamConnectError,
    UpstreamConnectTimeout,
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
        self.limiter = Limiter(route.max_concurrency * len(route.urls), route.max_queue)  # per replica
        self.counter = TokenCounter(route.name, route.tokenizer)
        self.pools = [Pool(url, route.connect_timeout) for url in route.urls]
        self.pool = self.pools[0]
        self.down: dict[Pool, asyncio.Future[None]] = {}  # replicas out of rotation -> their health check
        self._turn = 0
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
            " ".join(self.route.urls),
            exc.kind,
            exc,
        )
        where = f"Model {self.name!r}: the upstream server"
        if isinstance(exc, (UpstreamConnectError, UpstreamConnectTimeout)) and not started:
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
        if len(self.pools) > 1:
            return await self._post_balanced(path, body, extra, request_id)
        try:
            return await self.pool.request("POST", path, body, extra, self.route.read_timeout)
        except UpstreamError as exc:
            raise self.failure(exc, request_id=request_id) from None

    async def _post_balanced(
        self, path: str, body: bytes, extra: dict[str, str], request_id: str
    ) -> Response:
        tried: list[Pool] = []
        while True:
            pool = self._pick(tried)
            try:
                return await pool.request("POST", path, body, extra, self.route.read_timeout)
            except (UpstreamConnectError, UpstreamConnectTimeout) as exc:  # nothing was sent
                self._take_out(pool, exc, request_id)
                tried.append(pool)
                if len(tried) == len(self.pools):
                    raise self.failure(exc, request_id=request_id) from None
            except UpstreamError as exc:
                raise self.failure(exc, request_id=request_id) from None

    def _pick(self, tried: list[Pool]) -> Pool:
        """The replica in rotation with the fewest requests in flight (ties in turn); when every one
        is out of rotation, the ones not tried yet for this request (one may be back)."""
        pools = self.pools
        count = len(pools)
        self._turn = start = (self._turn + 1) % count
        best: Pool | None = None
        for pool in pools[start:] + pools[:start]:
            if pool in self.down or pool in tried:
                continue
            if best is None or pool.in_flight < best.in_flight:
                best = pool
        if best is None:
            best = next(pool for pool in pools[start:] + pools[:start] if pool not in tried)
        return best

    def _take_out(self, pool: Pool, exc: UpstreamError, request_id: str) -> None:
        if pool in self.down:
            return
        self.metrics.upstream_error(self.name, "replica_down")
        log.warning(
            "request %s: model %s: replica %s out of rotation (%s: %s); checking it every %g s",
            request_id,
            self.name,
            pool.base_url,
            exc.kind,
            exc,
            self.route.health_interval,
        )
        self.down[pool] = asyncio.ensure_future(self._check_until_back(pool))

    async def _check_until_back(self, pool: Pool) -> None:
        while True:
            await asyncio.sleep(self.route.health_interval)
            if await self._answers(pool, timeout=min(self.route.connect_timeout, 5.0)) is None:
                self.down.pop(pool, None)
                log.warning("model %s: replica %s is back in rotation", self.name, pool.base_url)
                return

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
                elif isinstance(parsed.get("message"), str):  # vLLM's {"object": "error", "message": ...}
                    detail = parsed["message"]
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
                " ".join(self.route.urls),
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
        """None when the upstream (one replica at least) lists its models, else why not."""
        if len(self.pools) == 1:
            return await self._answers(self.pool, timeout)
        problems = await asyncio.gather(*(self._answers(pool, timeout) for pool in self.pools))
        if any(problem is None for problem in problems):
            return None
        return "; ".join(f"replica {n + 1}: {problem}" for n, problem in enumerate(problems))

    async def _answers(self, pool: Pool, timeout: float) -> str | None:
        try:
            resp = await pool.request("GET", "/v1/models", b"", self._auth, timeout)
            try:
                await resp.read(1 << 20)
            finally:
                resp.close()
        except UpstreamError as exc:
            return f"{exc.kind}: {exc}"
        return None if resp.status == 200 else f"GET /v1/models answered {resp.status}"

    async def aclose(self) -> None:
        for check in self.down.values():
            check.cancel()
        self.down.clear()
        for pool in self.pools:
            await pool.aclose()
