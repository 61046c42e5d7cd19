"""Load and soak for the gateway (no tests here): the stand-in and `lfwrap gateway` in their own
processes on 127.0.0.1, plain requests and concurrent streams in one run, every answer checked.

A plain answer must be 200 with the stand-in's reply and the request's own x-request-id; a stream must
carry exactly the text its request asked the stand-in to echo (so a lost, truncated or interleaved
stream shows), end with [DONE], and keep one completion id. The gateway's RSS is sampled after a
warm-up and at the end.

    $ python tests/gateway_soak.py --requests 20000 --streams 500      # bench/bench_gateway_soak.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
REPLY = "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if getattr(exc, "code", None) is not None:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


class Stack:
    """The stand-in upstream and `lfwrap gateway` (open auth) as processes; stop() ends both."""

    def __init__(self, work: Path, *, chunks: int = 8, interval_ms: float = 40, **gateway: Any):
        self.work = work
        up_port, self.port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LFWRAP_HOME": str(work / "home")}
        self.standin = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "gateway_standin.py"), "--port", str(up_port),
             "--chunks", str(chunks), "--interval-ms", str(interval_ms)],
            stdout=subprocess.DEVNULL, stderr=(work / "standin.log").open("wb"), env=env,
        )  # fmt: skip
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "auth": "open",
            "models": [{"name": "conch", "upstream": f"http://127.0.0.1:{up_port}", "max_concurrency": 1024,
                        "max_queue": 4096}],
            **gateway,
        }  # fmt: skip
        (work / "gateway.yaml").write_text(json.dumps(config))
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "wrapper.cli.main", "gateway", "--open",
             "--config", str(work / "gateway.yaml"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=(work / "gateway.log").open("wb"), env=env,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            _wait(f"http://127.0.0.1:{up_port}/v1/models", self.standin)
            _wait(self.url + "/healthz", self.gateway)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        codes = []
        for proc in (self.gateway, self.standin):
            if proc.poll() is None:
                proc.terminate()
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
        return codes[0]


async def _plain(session: aiohttp.ClientSession, url: str, count: int, problems: list[str]) -> None:
    for _ in range(count):
        rid = secrets.token_hex(8)
        body = {"model": "conch", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(url, json=body, headers={"x-request-id": rid}) as resp:
            data = await resp.read()
            if resp.status != 200 or resp.headers.get("x-request-id") != rid:
                problems.append(f"plain {resp.status} {data[:120]!r}")
                continue
            if json.loads(data)["choices"][0]["message"]["content"] != REPLY:
                problems.append(f"plain wrong content {data[:120]!r}")


async def one_stream(session: aiohttp.ClientSession, url: str, text: str) -> str | None:
    """None when the stream carried exactly `text`, else what was wrong."""
    body = {"model": "conch", "stream": True, "standin": {"mode": "echo"},
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    async with session.post(url, json=body) as resp:
        raw = (await resp.read()).decode()
    if resp.status != 200:
        return f"stream {resp.status} {raw[:120]}"
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream truncated: {raw[-120:]!r}"
    chunks = [json.loads(e) for e in events[:-1]]
    got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    if got != text:
        return f"stream content {got!r} != {text!r}"
    if len({c.get("id") for c in chunks}) != 1:
        return "stream mixes completion ids"
    return None


async def run_load(url: str, requests: int, streams: int, concurrency: int = 64) -> dict[str, Any]:
    endpoint = url + "/v1/chat/completions"
    problems: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        per_worker, extra = divmod(requests, concurrency)
        plain = [
            _plain(session, endpoint, per_worker + (1 if n < extra else 0), problems)
            for n in range(concurrency)
        ]
        texts = [f"s{n}-{secrets.token_hex(6)}-{'好' * (n % 7)}" for n in range(streams)]
        peak = [0.0]
        sampler = asyncio.ensure_future(_peak_in_flight(session, url, peak))
        outcomes = await asyncio.gather(*plain, *(one_stream(session, endpoint, t) for t in texts))
        elapsed = time.perf_counter() - started
        sampler.cancel()
    problems += [o for o in outcomes[concurrency:] if o]
    return {"requests": requests, "streams": streams, "seconds": elapsed, "problems": problems,
            "peak_in_flight": int(peak[0])}  # fmt: skip


async def _peak_in_flight(session: aiohttp.ClientSession, url: str, peak: list[float]) -> None:
    """The most requests in flight to the upstream the gateway's /metrics showed, sampled every 50 ms."""
    while True:
        async with session.get(url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("lfwrap_gateway_in_flight{"):
                    peak[0] = max(peak[0], float(line.rsplit(" ", 1)[1]))
        await asyncio.sleep(0.05)


def soak(requests: int, streams: int, work: Path | None = None) -> dict[str, Any]:
    work = work or Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    stack = Stack(work, interval_ms=250)  # 8 chunks: each stream lasts ~2.5 s, so they overlap
    try:
        asyncio.run(run_load(stack.url, 500, 50))  # warm-up
        before = rss_mb(stack.gateway.pid)
        result = asyncio.run(run_load(stack.url, requests, streams))
        result["rss_before_mb"], result["rss_after_mb"] = before, rss_mb(stack.gateway.pid)
    finally:
        result_code = stack.stop()
    result["exit_code"] = result_code
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=500)
    args = parser.parse_args()
    r = soak(args.requests, args.streams)
    print(
        f"{r['requests']} plain requests and {r['streams']} concurrent streams in {r['seconds']:.1f} s "
        f"(peak {r['peak_in_flight']} in flight upstream); "
        f"problems {len(r['problems'])}; gateway RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB; "
        f"exit {r['exit_code']}"
    )
    for problem in r["problems"][:10]:
        print("  " + problem)
    print(
        f"SUMMARY soak {r['requests']} requests + {r['streams']} streams: {len(r['problems'])} "
        f"lost/truncated/interleaved, RSS +{r['rss_after_mb'] - r['rss_before_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
