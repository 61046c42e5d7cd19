"""The upstream side: one pooled aiohttp client for every LLaMA-Factory API server.

aiohttp is the hot-path client because it measured several times faster than httpx in front of the
same stand-in (bench/bench_gateway.py); httpx stays in the CLI and the tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from wrapper.gateway.limiter import Limiter
from wrapper.gateway.metrics import Metrics
from wrapper.gateway.oai import ApiError
from wrapper.gateway.settings import ModelRoute
from wrapper.gateway.usage import TokenCounter

RETRY_AFTER_DOWN = "5"


def new_session() -> aiohttp.ClientSession:
    """One shared connection pool; the per-upstream limiters bound what goes through it."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


class Upstream:
    """One route: where it goes, how many requests may be in flight, how to count its tokens."""

    def __init__(self, route: ModelRoute, metrics: Metrics):
        self.route = route
        self.name = route.name
        self.metrics = metrics
        self.limiter = Limiter(route.max_concurrency, route.max_queue)
        self.counter = TokenCounter(route.name, route.tokenizer)
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=route.connect_timeout, sock_read=route.read_timeout
        )
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if route.upstream_key is not None:
            self.headers["Authorization"] = "Bearer " + route.upstream_key.get_secret_value()
        metrics.gauges[route.name] = (lambda: self.limiter.in_flight, lambda: self.limiter.queued)

    async def post(
        self, session: aiohttp.ClientSession, path: str, body: bytes, request_id: str
    ) -> aiohttp.ClientResponse:
        """Send the request; map failures before any answer to 503/504/502."""
        url = self.route.upstream + path
        headers = {**self.headers, "x-request-id": request_id}
        try:
            return await session.post(url, data=body, headers=headers, timeout=self.timeout)
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            self.metrics.upstream_error(self.name, "connect")
            raise ApiError(
                503,
                f"Model {self.name!r} is unavailable: its upstream {self.route.upstream} does "
                f"not answer ({exc.__class__.__name__}); start it (lfwrap serve) or retry later.",
                code="upstream_unavailable",
                retry_after=RETRY_AFTER_DOWN,
            ) from None
        except asyncio.TimeoutError:
            self.metrics.upstream_error(self.name, "timeout")
            raise ApiError(
                504,
                f"Model {self.name!r}: upstream {self.route.upstream} did not answer in time "
                f"(connect {self.route.connect_timeout:g} s, read {self.route.read_timeout:g} s).",
                code="upstream_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            self.metrics.upstream_error(self.name, "protocol")
            raise ApiError(
                502,
                f"Model {self.name!r}: bad answer from upstream {self.route.upstream} "
                f"({exc.__class__.__name__}: {exc}).",
                code="bad_upstream_response",
            ) from None

    async def error_from(self, resp: aiohttp.ClientResponse) -> ApiError:
        """Translate a non-200 upstream answer (FastAPI's {"detail": ...}) into an OpenAI error."""
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raw = b""
        finally:
            resp.release()
        detail: Any = raw.decode("utf-8", "replace")[:500]
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
                retry_after=resp.headers.get("Retry-After", "1"),
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

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 2.0) -> str | None:
        """None when the upstream lists its models, else why not."""
        url = self.route.upstream + "/v1/models"
        headers = {k: v for k, v in self.headers.items() if k == "Authorization"}
        try:
            async with session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                await resp.read()
                return None if resp.status == 200 else f"GET /v1/models answered {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
