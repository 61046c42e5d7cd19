"""The upstream client: keep-alive HTTP/1.1 connection pools over asyncio, parsed by httptools.

Why not a general client: the gateway's throughput on a small machine is bounded by the CPU its one
event loop spends per request, and the client is the largest share of it. Measured side by side in
bench/bench_gateway.py (`--baseline`, c=64, the same gateway, wrk): this client served 1.8x the
requests/s of aiohttp's; a bare proxy on the same server served 12,134 req/s with it and 4,664 with
aiohttp (2.6x), and aiosonic measured no better than aiohttp. The parsing is httptools' (llhttp, the
parser Node.js uses); what is written here is the connection pool, request framing and timeouts,
attacked by tests/gateway/test_httpclient.py (framing split at every byte, chunked and close-delimited
bodies, garbage, resets, stalls, oversized answers, stale pooled connections).

What the gateway asks of it: POST or GET with a small body; the answer read whole up to a limit, or as
body pieces the moment they arrive (reading pauses while more than MAX_BUFFER waits for the caller);
a connect timeout and a timeout between reads; `close()` that drops the connection at once (the
upstream sees its request end); typed errors. Redirects are never followed and no cookies are kept:
the gateway only ever calls the configured upstream, and callers share nothing through it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

MAX_BUFFER = 1 << 20  # streaming: stop reading from the upstream while this much waits for the caller
MAX_IDLE = 512  # kept-alive connections per upstream
_FRAMING = (b"content-length", b"transfer-encoding")  # the answer's end is known without a close
_UNSAFE = frozenset("\r\n\0")


class UpstreamError(Exception):
    """A failed exchange with an upstream; `kind` names the subclass for metrics labels."""

    kind = "protocol"


class UpstreamConnectError(UpstreamError):
    """The connection was refused or the address unreachable."""

    kind = "connect"


class UpstreamTimeout(UpstreamError):
    """No connection within connect_timeout, or no data for read_timeout."""

    kind = "timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within connect_timeout (nothing was sent)."""


class UpstreamProtocolError(UpstreamError):
    """A broken answer: not HTTP, cut short, or closed mid-answer."""

    kind = "protocol"


class UpstreamTooLarge(UpstreamProtocolError):
    """A whole answer (read()) larger than the caller's limit."""

    kind = "too_large"


class _Connection(asyncio.Protocol):
    """One connection and the answer in progress on it (httptools calls the on_* methods)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # once per connection, not per wait: on Python 3.11 get_running_loop() costs a getpid() call
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when the armed timer fires
        self.deadline = 0.0  # loop time when the current wait() times out
        self.timeout = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.begin()

    def begin(self) -> None:
        """Ready for the next answer on this connection."""
        self.parser = httptools.HttpResponseParser(self)
        self._answer()

    def _answer(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []  # decoded only when asked (Response.headers)
        self.headers_done = False
        self.complete = False
        self.framed = False
        self.keep_alive = False
        self.received = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.limit = 0  # read(): the most a whole answer may be; 0 while streaming (pieces())
        self.error: UpstreamError | None = None

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.complete:
            # bytes after a whole answer, before anything was asked: not a connection to reuse
            self.keep_alive = False
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream asked to switch protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed HTTP answer ({exc})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.complete:
            return
        if self.headers_done and not self.framed and exc is None:
            self.complete = True  # a body delimited by the connection's end
            self._wake()
        else:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamProtocolError(f"the upstream closed the connection mid-answer{reason}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        if not self.framed:
            self.framed = name.lower() in _FRAMING

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.framed = self.framed or self.status in (204, 304)  # no body by definition
        self.keep_alive = self.framed and self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.limit:  # read(): collect up to the limit, then give up on this connection
            if self.buffered > self.limit:
                self.body = []
                self._fail(UpstreamTooLarge(f"the answer is over {self.limit} bytes (max_response_bytes)"))
                self.abort()
                return
        elif self.buffered > MAX_BUFFER and not self.paused and self.transport is not None:
            self.paused = True  # pieces(): the caller is slower than the upstream; wait for it
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            self._answer()  # the same parser goes on with the next answer
            self.received = True
            return
        self.complete = True
        self._wake()

    # helpers
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def take_body(self) -> bytes:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def wait(self, timeout: float) -> None:
        """Until the parser has news, or `timeout` s without any. One timer serves many waits: armed
        when none is, it re-arms itself for the latest deadline instead of being replaced per wait."""
        loop = self.loop
        waiter = self.waiter = loop.create_future()
        self.deadline = loop.time() + timeout
        self.timeout = timeout
        if self.timer is None or self.timer_at > self.deadline:  # none armed, or armed too late
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = self.deadline
            self.timer = loop.call_at(self.deadline, self._expire)
        try:
            await waiter
        finally:
            self.waiter = None

    def _expire(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait() arms the timer again
        if self.loop.time() < self.deadline - 0.0005:
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._expire)
        else:
            waiter.set_exception(UpstreamTimeout(f"no data for {self.timeout:g} s"))

    def abort(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()


class Response:
    """An answer whose status line and headers are in; its body is read with read() or pieces()."""

    __slots__ = ("_conn", "_pool", "_timeout", "status", "_raw_headers")

    def __init__(self, conn: _Connection, pool: Pool, read_timeout: float):
        self._conn: _Connection | None = conn
        self._pool = pool
        self._timeout = read_timeout
        self.status = conn.status
        self._raw_headers = conn.raw_headers

    @property
    def headers(self) -> dict[str, str]:
        """The answer's headers, names in lower case (the last of repeated ones)."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}

    async def read(self, limit: int = 1 << 62) -> bytes:
        """The whole answer; UpstreamTooLarge past `limit` bytes (the connection is dropped)."""
        conn = self._conn
        if conn is None:
            raise UpstreamProtocolError("the answer was already read or closed")
        conn.limit = limit
        if conn.buffered > limit:
            conn.on_body(b"")  # already over: fail now
        elif conn.paused and conn.transport is not None and not conn.closed:
            conn.paused = False
            conn.transport.resume_reading()
        while not conn.complete:
            if conn.error is not None:
                break
            await conn.wait(self._timeout)
        if conn.error is not None:
            self.close()
            raise conn.error
        body = conn.take_body()
        self._finish()
        return body

    async def pieces(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (whatever one read from the socket brought)."""
        conn = self._conn
        if conn is None:
            raise UpstreamProtocolError("the answer was already read or closed")
        while True:
            if conn.body:
                yield conn.take_body()
            elif conn.complete:
                self._finish()
                return
            elif conn.error is not None:
                self.close()
                raise conn.error
            else:
                await conn.wait(self._timeout)

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.in_flight -= 1
            self._pool.release(conn)

    def close(self) -> None:
        """Drop the connection unless the answer was read to the end (then it went back to the pool)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.in_flight -= 1
            conn.abort()


class Pool:
    """Keep-alive connections to one upstream base URL (http or https, optional path prefix)."""

    def __init__(self, base_url: str, connect_timeout: float):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.connect_timeout = connect_timeout
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None
        self._idle: list[_Connection] = []
        self.in_flight = 0  # requests sent whose answer is not read or closed yet (replica balancing)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise UpstreamProtocolError(f"TLS failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamConnectError(exc.strerror or str(exc) or exc.__class__.__name__) from None
        return conn

    def head(self, method: str, path: str, body_length: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        if body_length or method == "POST":
            lines.append(f"Content-Length: {body_length}\r\n")
        for name, value in headers.items():
            if _UNSAFE.intersection(name) or _UNSAFE.intersection(value):
                raise UpstreamProtocolError(f"header {name!r} holds a line break")  # never splice requests
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], read_timeout: float
    ) -> Response:
        """Send one request; returns once the status line and headers are in."""
        payload = self.head(method, path, len(body), headers) + body
        self.in_flight += 1
        try:
            return await self._exchange(payload, read_timeout)
        except BaseException:
            self.in_flight -= 1
            raise

    async def _exchange(self, payload: bytes, read_timeout: float) -> Response:
        for attempt in (0, 1):
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            conn.begin()
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(read_timeout)
            except UpstreamError as exc:
                conn.abort()
                if reused and attempt == 0 and isinstance(exc, UpstreamProtocolError) and not conn.received:
                    continue  # a kept-alive connection the upstream had closed: once more on a fresh one
                raise
            except BaseException:
                conn.abort()  # cancelled (the caller left): the upstream sees its request end
                raise
            return Response(conn, self, read_timeout)
        raise AssertionError("unreachable")

    def release(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive or len(self._idle) >= MAX_IDLE:
            conn.abort()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()

    async def aclose(self) -> None:
        self.close()
