"""The upstream HTTP client: aiohttp's keep-alive pool, narrowed to what the gateway needs.

A home-made httptools client served here before; inside the gateway it measured 1.18x to 1.50x
aiohttp's requests/s (bench/bench_gateway.py, three runs), short of the 1.5x that would justify
keeping home-made code, so aiohttp does the HTTP.

What the gateway asks of it: POST or GET with a small body; the answer read whole up to a limit, or as
body pieces the moment they arrive; a connect timeout and a timeout between reads; `close()` that drops
the connection at once (the upstream sees its request end); typed errors. Redirects are never followed
and no cookies are kept: the gateway only ever calls the configured upstream, and callers share
nothing through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp


class UpstreamError(Exception):
    """A failed exchange with an upstream; `kind` names the subclass for metrics labels."""

    kind = "protocol"


class UpstreamConnectError(UpstreamError):
    """The connection was refused or the address unreachable."""

    kind = "connect"


class UpstreamTimeout(UpstreamError):
    """No connection within connect_timeout, or no data for read_timeout."""

    kind = "timeout"


class UpstreamProtocolError(UpstreamError):
    """A broken answer: not HTTP, cut short, or closed mid-answer."""

    kind = "protocol"


class UpstreamTooLarge(UpstreamProtocolError):
    """A whole answer (read()) larger than the caller's limit."""

    kind = "too_large"


def _typed(exc: BaseException) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(str(exc) or "no data within the timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(exc.strerror or str(exc.os_error) or exc.__class__.__name__)
    return UpstreamProtocolError(str(exc) or exc.__class__.__name__)


_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


class Response:
    __slots__ = ("_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp
        self.status = resp.status

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers, names in lower case (built on demand: only error answers ask)."""
        return {name.lower(): value for name, value in self._resp.headers.items()}

    async def read(self, limit: int = 1 << 62) -> bytes:
        """The whole answer; UpstreamTooLarge past `limit` bytes (the connection is dropped)."""
        resp = self._resp
        if resp.content_length is not None and resp.content_length <= limit:  # the usual case
            try:
                body = await resp.read()
            except _FAILURES as exc:
                resp.close()
                raise _typed(exc) from None
            resp.release()
            return body
        chunks, size = [], 0
        try:
            async for chunk in self._resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    self._resp.close()
                    raise UpstreamTooLarge(f"the answer is over {limit} bytes (max_response_bytes)")
                chunks.append(chunk)
        except _FAILURES as exc:
            self._resp.close()
            raise _typed(exc) from None
        self._resp.release()  # read to the end: the connection goes back to the pool
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def pieces(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (whatever one read from the socket brought)."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            self._resp.close()
            raise _typed(exc) from None
        self._resp.release()

    def close(self) -> None:
        """Drop the connection unless the answer was read to the end (then it went back to the pool)."""
        self._resp.close()


class Pool:
    """Keep-alive connections to one upstream base URL (http or https, optional path prefix)."""

    def __init__(self, base_url: str, connect_timeout: float):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                cookie_jar=aiohttp.DummyCookieJar(),
                # no User-Agent; no Accept-Encoding either: answers come uncompressed, nothing to inflate
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], read_timeout: float
    ) -> Response:
        """Send one request; returns once the status line and headers are in."""
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:  # one per distinct read_timeout, not one per request
            timeout = self._timeouts[read_timeout] = aiohttp.ClientTimeout(
                total=None,
                connect=self.connect_timeout,
                sock_connect=self.connect_timeout,
                sock_read=read_timeout,
            )
        for attempt in (0, 1):
            try:
                resp = await self._client().request(
                    method,
                    self.base_url + path,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except aiohttp.ServerDisconnectedError:
                if attempt == 0:
                    continue  # a kept-alive connection the upstream had closed: once more on a fresh one
                raise UpstreamProtocolError("the upstream closed the connection before answering") from None
            except _FAILURES as exc:
                raise _typed(exc) from None
            return Response(resp)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                asyncio.get_running_loop().create_task(session.close())
            except RuntimeError:  # no loop running any more: the process is ending
                pass
