"""The upstream side: per-route connection pools, request forwarding and the mapping of failures to
OpenAI errors (503 down, 504 timeout, 502 bad answer; FastAPI's {"detail": ...} translated)."""

from __future__ import annotations

import orjson

from wrapper.gateway.httpclient import Pool, Response, UpstreamError
from wrapper.gateway.limiter import Limiter
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import ApiError
from wrapper.gateway.settings import ModelRoute
from wrapper.gateway.usage import TokenCounter

RETRY_AFTER_DOWN = "5"


class Upstream:
    """One route: where it goes, how many requests may be in flight, how to count its tokens."""

    def __init__(self, route: ModelRoute, metrics: Metrics):
        self.route = route
        self.name = route.name
        self.metrics = metrics
        self.limiter = Limiter(route.max_concurrency, route.max_queue)
        self.counter = TokenCounter(route.name, route.tokenizer)
        self.pool = Pool(route.upstream, route.connect_timeout)
        self._auth = ""
        if route.upstream_key is not None:
            self._auth = f"Authorization: Bearer {route.upstream_key.get_secret_value()}\r\n"
        metrics.gauges[route.name] = (lambda: self.limiter.in_flight, lambda: self.limiter.queued)

    def failure(self, exc: UpstreamError, *, started: bool = False) -> ApiError:
        """The OpenAI error for a failed exchange with this upstream (and count it)."""
        self.metrics.upstream_error(self.name, exc.kind)
        where = f"Model {self.name!r}: upstream {self.route.upstream}"
        if exc.kind == "connect" and not started:
            return ApiError(
                503,
                f"{where} does not answer ({exc}); start it (lfwrap serve) or retry later.",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER_DOWN,
            )
        if exc.kind == "timeout":
            return ApiError(
                504,
                f"{where} timed out: {exc} (connect_timeout {self.route.connect_timeout:g} s, "
                f"read_timeout {self.route.read_timeout:g} s).",
                code="upstream_timeout",
            )
        return ApiError(502, f"{where} gave a broken answer: {exc}.", code="bad_upstream_response")

    async def post(self, path: str, body: bytes, request_id: str) -> Response:
        extra = f"Content-Type: application/json\r\nx-request-id: {request_id}\r\n{self._auth}"
        try:
            return await self.pool.request("POST", path, body, extra, self.route.read_timeout)
        except UpstreamError as exc:
            raise self.failure(exc) from None

    async def error_from(self, resp: Response) -> ApiError:
        """Translate a non-200 upstream answer (FastAPI's {"detail": ...}) into an OpenAI error."""
        try:
            raw = await resp.read()
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
            return ApiError(
                502,
                f"Upstream {self.route.upstream} refused the gateway's credentials for model "
                f"{self.name!r}; set upstream_key to the server's API_KEY.",
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
            f"Model {self.name!r}: upstream {self.route.upstream} answered {status}: {detail}",
            code="bad_upstream_response",
        )

    async def ready(self, timeout: float = 2.0) -> str | None:
        """None when the upstream lists its models, else why not."""
        try:
            resp = await self.pool.request("GET", "/v1/models", b"", self._auth, timeout)
            try:
                await resp.read()
            finally:
                resp.close()
        except UpstreamError as exc:
            return f"{exc.kind}: {exc}"
        return None if resp.status == 200 else f"GET /v1/models answered {resp.status}"

    def close(self) -> None:
        self.pool.close()
