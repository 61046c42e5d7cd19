"""Load, soak and graceful shutdown with `lfwrap gateway` as its own process (the short versions; the
long soak is bench/bench_gateway_soak.py)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
from gateway_soak import Stack, one_stream, soak


def test_short_soak_loses_truncates_and_mixes_nothing(tmp_path: Path) -> None:
    result = soak(2000, 100, tmp_path)
    assert result["problems"] == []
    assert result["peak_in_flight"] >= 50  # the streams really overlapped
    assert result["rss_after_mb"] - result["rss_before_mb"] < 40
    assert result["exit_code"] == 0  # SIGTERM at the end: drained, exit 0


def test_sigterm_with_50_streams_in_flight_lets_them_finish(tmp_path: Path) -> None:
    stack = Stack(tmp_path, chunks=10, interval_ms=300)  # each stream lasts ~3 s
    try:

        async def run() -> list[str | None]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                endpoint = stack.url + "/v1/chat/completions"
                streams = [
                    asyncio.ensure_future(one_stream(session, endpoint, f"stream {n} 神奇海螺"))
                    for n in range(50)
                ]
                await asyncio.sleep(1.0)  # all 50 under way
                assert not any(s.done() for s in streams)
                stack.gateway.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                try:  # the listener is closed: new connections are refused
                    socket.create_connection(("127.0.0.1", stack.port), timeout=1).close()
                    refused = False
                except OSError:
                    refused = True
                assert refused
                return await asyncio.gather(*streams)

        started = time.monotonic()
        outcomes = asyncio.run(run())
        assert outcomes == [None] * 50  # every stream complete, with [DONE], its own text
        assert stack.gateway.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        stack.stop()
