"""The upstream client (httptools) against raw TCP servers: framing, keep-alive reuse, typed
failures, timeouts, the size limit, and redirects never followed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wrapper.gateway.httpclient import MAX_BUFFER, Pool, UpstreamError, UpstreamTooLarge

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_server(handler: Handler, body: Callable[[str, list[int]], Awaitable[None]]) -> list[int]:
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(f"http://127.0.0.1:{port}", connections)
    finally:
        server.close()
    return connections


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given():
    seen: list[bytes] = []

    async def handler(reader, writer):
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-type: application/json\r\n\r\n{}")
            await writer.drain()

    async def body(url, connections):
        pool = Pool(url + "/prefix", connect_timeout=2)
        for _ in range(3):
            resp = await pool.request("POST", "/v1/x", b'{"a":1}', {"x-request-id": "r1"}, 2)
            assert (resp.status, resp.headers["content-type"], await resp.read()) == (
                200,
                "application/json",
                b"{}",
            )
        pool.close()

    assert len(asyncio.run(_with_server(handler, body))) == 1
    head, _, sent = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /prefix/v1/x HTTP/1.1" and sent == b'{"a":1}'
    assert "x-request-id: r1" in lines and "Content-Length: 7" in lines
    assert not any(line.lower().startswith(("cookie", "user-agent")) for line in lines)


def test_chunked_and_close_delimited_bodies_arrive_in_pieces():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        assert [piece async for piece in resp.pieces()] == [b"hello", b" world"]
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        assert await resp.read() == b"until the end"

    asyncio.run(_with_server(handler, body))


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "protocol"),
        (None, "timeout"),
    ],
)
def test_broken_answers_and_silence_raise_upstream_errors(reply, kind):
    async def handler(reader, writer):
        await _read_request(reader)
        if reply is None:
            await asyncio.sleep(1)
            return
        writer.write(reply)
        await writer.drain()

    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        with pytest.raises(UpstreamError) as info:
            resp = await pool.request("POST", "/", b"{}", {}, 0.2)
            await resp.read()
        assert info.value.kind == kind

    asyncio.run(_with_server(handler, body))


def test_refused_connection_is_a_connect_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError) as info:
            await Pool(f"http://127.0.0.1:{port}", connect_timeout=2).request("GET", "/", b"", {}, 1)
        assert info.value.kind == "connect"

    asyncio.run(main())


def test_close_mid_answer_drops_the_connection():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        assert await reader.read() == b""  # the client hung up
        state.append("client closed")

    state: list[str] = []

    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        async for piece in resp.pieces():
            assert piece == b"a"
            break
        resp.close()
        for _ in range(100):
            if state:
                break
            await asyncio.sleep(0.01)

    asyncio.run(_with_server(handler, body))
    assert state == ["client closed"]


def _answer_after(delays: list[float]) -> Handler:
    """A keep-alive server answering its n-th request on a connection after delays[n] seconds."""

    async def handler(reader, writer):
        for delay in delays:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    return handler


def test_a_shorter_read_timeout_on_a_reused_connection_still_applies():
    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        assert await (await pool.request("POST", "/", b"{}", {}, 30)).read() == b"ok"
        with pytest.raises(UpstreamError) as info:  # the server answers after 1.5 s: well past 0.2 s
            await (await pool.request("POST", "/", b"{}", {}, 0.2)).read()
        assert info.value.kind == "timeout"
        assert len(connections) == 1  # the second request went over the first one's connection

    asyncio.run(_with_server(_answer_after([0, 1.5]), body))


def test_the_read_timeout_counts_from_each_wait_not_from_an_earlier_one():
    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        assert await (await pool.request("POST", "/", b"{}", {}, 1.0)).read() == b"ok"
        await asyncio.sleep(0.6)
        # answered 0.7 s into this wait: inside its own 1 s, though past the first request's deadline
        assert await (await pool.request("POST", "/", b"{}", {}, 1.0)).read() == b"ok"
        assert len(connections) == 1

    asyncio.run(_with_server(_answer_after([0, 0.7]), body))


def test_an_answer_over_the_limit_is_too_large():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()

    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        with pytest.raises(UpstreamTooLarge):
            await resp.read(limit=1000)

    asyncio.run(_with_server(handler, body))


def test_a_redirect_is_not_followed():
    hits: list[bytes] = []

    async def handler(reader, writer):
        hits.append(await _read_request(reader))
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()

    async def body(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        assert resp.status == 307  # handed back as an answer, not followed
        resp.close()

    asyncio.run(_with_server(handler, body))
    assert len(hits) == 1


# --- attacks on the home-made parts: framing split anywhere, garbage, stale connections, injection ---


def _framed(body: bytes, framing: str, cuts: list[int]) -> bytes:
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    out, start = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"], 0
    for cut in sorted({min(c, len(body)) for c in cuts} | {len(body)}):
        if cut > start:
            out.append(b"%x\r\n" % (cut - start) + body[start:cut] + b"\r\n")
            start = cut
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    splits=st.lists(st.integers(1, 4000), max_size=8),
    streamed=st.booleans(),
)
def test_any_framing_split_anywhere_gives_back_the_exact_body(body, framing, cuts, splits, streamed):
    wire = _framed(body, framing, cuts)

    async def handler(reader, writer):
        await _read_request(reader)
        at = 0
        for split in sorted(set(splits)):  # the answer arrives in arbitrary pieces
            if split < len(wire) and split > at:
                writer.write(wire[at:split])
                await writer.drain()
                await asyncio.sleep(0)
                at = split
        writer.write(wire[at:])
        await writer.drain()
        if framing == "close":
            writer.close()

    async def run(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 2)
        got = b"".join([p async for p in resp.pieces()]) if streamed else await resp.read()
        assert got == body
        pool.close()

    asyncio.run(_with_server(handler, run))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=st.binary(min_size=1, max_size=300))
def test_garbage_answers_end_as_upstream_errors_or_answers_never_anything_else(reply):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def run(url, connections):
        pool = Pool(url, connect_timeout=2)
        try:
            resp = await pool.request("POST", "/", b"{}", {}, 1)
            await resp.read(limit=10_000)
        except UpstreamError:
            pass  # the expected outcome; anything but an UpstreamError fails the test
        pool.close()

    asyncio.run(_with_server(handler, run))


def test_an_interim_100_continue_is_skipped():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def run(url, connections):
        resp = await Pool(url, connect_timeout=2).request("POST", "/", b"{}", {}, 2)
        assert (resp.status, await resp.read()) == (200, b"ok")

    asyncio.run(_with_server(handler, run))


def test_a_connection_that_speaks_out_of_turn_is_not_reused():
    async def handler(reader, writer):
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            # one answer plus bytes nobody asked for: the next answer on this connection can't be trusted
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
            await writer.drain()

    async def run(url, connections):
        pool = Pool(url, connect_timeout=2)
        for _ in range(2):
            assert await (await pool.request("POST", "/", b"{}", {}, 2)).read() == b"ok"
            await asyncio.sleep(0.2)
        assert len(connections) == 2  # the first connection was dropped, not handed a stale answer

    asyncio.run(_with_server(handler, run))


def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_once_on_a_fresh_one():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # and then the server closes this kept-alive connection (idle timeout, restart)

    async def run(url, connections):
        pool = Pool(url, connect_timeout=2)
        assert await (await pool.request("POST", "/", b"{}", {}, 2)).read() == b"ok"
        await asyncio.sleep(0.1)
        assert await (await pool.request("POST", "/", b"{}", {}, 2)).read() == b"ok"
        assert len(connections) == 2

    asyncio.run(_with_server(handler, run))


def test_a_header_with_a_line_break_is_refused_never_sent():
    async def run(url, connections):
        with pytest.raises(UpstreamError):
            spliced = {"x-request-id": "a\r\nHost: x"}
            await Pool(url, connect_timeout=2).request("POST", "/", b"{}", spliced, 2)
        assert connections == []

    asyncio.run(_with_server(_answer_after([0]), run))


def test_a_slow_reader_pauses_the_upstream_instead_of_buffering_everything():
    total = 8 * MAX_BUFFER
    sent: list[int] = []

    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()  # blocks once the client stops reading
            sent.append(len(piece))

    async def run(url, connections):
        pool = Pool(url, connect_timeout=2)
        resp = await pool.request("POST", "/", b"{}", {}, 5)
        got, peak = 0, 0
        async for piece in resp.pieces():
            got += len(piece)
            peak = max(peak, len(piece))
            await asyncio.sleep(0.2 if got < 2 * MAX_BUFFER else 0)  # a slow caller at first
        assert got == total
        assert peak <= MAX_BUFFER + 262144  # never more than the buffer and one socket read waiting

    asyncio.run(_with_server(handler, run))
