"""A load generator in its own process, for what wrk cannot see (streamed chunk timing) and for
machines without wrk (plain requests). Prints one JSON object.

    python loadgen.py plain  URL KEY CONCURRENCY SECONDS
    python loadgen.py stream URL KEY REQUESTS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

BODY = {"model": "bench", "messages": [{"role": "user", "content": "请问你是谁"}]}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def plain(url: str, key: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = json.dumps(BODY).encode()
    stop = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - start) * 1000)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "rps": len(latencies) / elapsed,
        "errors": errors,
    }


async def stream(url: str, key: str, requests: int) -> dict[str, float]:
    ttft: list[float] = []
    gaps: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = json.dumps({**BODY, "stream": True}).encode()
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            start = time.perf_counter()
            last = None
            async with session.post(url, data=payload, headers=headers) as resp:
                async for line in resp.content:
                    if not line.startswith(b"data: {"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttft.append((now - start) * 1000)
                    else:
                        gaps.append((now - last) * 1000)
                    last = now
    return {
        "ttft_p50_ms": _pct(ttft, 0.5),
        "gap_p50_ms": _pct(gaps, 0.5),
        "gap_p99_ms": _pct(gaps, 0.99),
        "gap_mean_ms": sum(gaps) / len(gaps) if gaps else float("nan"),
        "chunks": len(gaps) + len(ttft),
    }


def main() -> None:
    mode, url, key = sys.argv[1:4]
    if mode == "plain":
        result = asyncio.run(plain(url, key, int(sys.argv[4]), float(sys.argv[5])))
    else:
        result = asyncio.run(stream(url, key, int(sys.argv[4])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
