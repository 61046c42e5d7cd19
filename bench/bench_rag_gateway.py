"""Grounding on the gateway: inline on the event loop, or in a thread (asyncio.to_thread)?

For the bundled Krusty Krab index and a synthetic index of --chunks chunks (bench_rag.py's corpus), in
one run: RouteRetriever.ground() per call (p50/p99), then --requests groundings issued by --concurrency
asyncio tasks, inline and through asyncio.to_thread, in alternating rounds (--rounds each, medians
reported): the wall time (throughput) and the event loop's p99 lag (a 1 ms ticker: how long other
requests would wait for the loop). The last line is the summary.

    python bench/bench_rag_gateway.py [--chunks 100000] [--requests 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rag import corpus, pct  # noqa: E402


async def drive(ground, questions: list[str], concurrency: int, threaded: bool) -> tuple[float, float]:
    """(wall seconds, p99 event-loop lag in ms) for grounding every question."""
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - start - 0.001))

    queue = list(questions)

    async def worker() -> None:
        while queue:
            messages = [{"role": "user", "content": queue.pop()}]
            if threaded:
                await asyncio.to_thread(ground, messages)
            else:
                ground(messages)
                await asyncio.sleep(0)  # the request's other awaits

    tick = asyncio.ensure_future(ticker())
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    stop = True
    await tick
    return wall, pct(lags, 0.99)


def measure(name: str, route, questions: list[str], concurrency: int, rounds: int) -> tuple[float, float]:
    per_call = []
    for q in questions[:300]:
        start = time.perf_counter()
        route.ground([{"role": "user", "content": q}])
        per_call.append(time.perf_counter() - start)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for threaded in (False, True):
            runs[threaded].append(asyncio.run(drive(route.ground, questions, concurrency, threaded)))
    inline_wall, inline_lag = (statistics.median(x) for x in zip(*runs[False], strict=True))
    thread_wall, thread_lag = (statistics.median(x) for x in zip(*runs[True], strict=True))
    n = len(questions)
    print(
        f"{name}: ground() p50 {pct(per_call, 0.5):.3f} ms p99 {pct(per_call, 0.99):.3f} ms; "
        f"{n} at c={concurrency}: inline {n / inline_wall:.0f}/s (p99 loop lag {inline_lag:.1f} ms), "
        f"to_thread {n / thread_wall:.0f}/s (p99 loop lag {thread_lag:.1f} ms), "
        f"inline/thread throughput {thread_wall / inline_wall:.2f}x"
    )
    return thread_wall / inline_wall, pct(per_call, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LFWRAP_HOME"] = tmp
        from wrapper.home import bundled_rag_docs_dir
        from wrapper.rag.indexer import index_paths
        from wrapper.rag.route import RagRoute, RouteRetriever
        from wrapper.rag.store import LocalTarget, rag_dir

        index_paths(LocalTarget(rag_dir() / "menu"), "menu", [bundled_rag_docs_dir()])
        rng = random.Random(1)
        menu_q = ["How much is a Krabby Patty?", "蟹黄堡多少钱？", "When does the Krusty Krab open?", "海带"]
        small = measure(
            "bundled menu index",
            RouteRetriever(RagRoute(index="menu")),
            [rng.choice(menu_q) for _ in range(args.requests)],
            args.concurrency,
            args.rounds,
        )
        chunks, words = corpus(args.chunks)
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i in range(0, len(chunks), 1000):
            body = "\n\n".join(f"## Section {j}\n\n{c}" for j, c in enumerate(chunks[i : i + 1000]))
            (docs / f"doc{i // 1000:04d}.md").write_text(body, encoding="utf-8")
        index_paths(LocalTarget(rag_dir() / "synthetic"), "synthetic", [docs])
        questions = [" ".join(rng.choices(words[:4000], k=5)) for _ in range(args.requests)]
        big = measure(
            f"synthetic {args.chunks} chunks",
            RouteRetriever(RagRoute(index="synthetic")),
            questions,
            args.concurrency,
            args.rounds,
        )
    print(
        f"summary: inline grounding is {small[0]:.2f}x (menu) and {big[0]:.2f}x ({args.chunks} chunks) the "
        f"throughput of asyncio.to_thread; ground() p50 {small[1]:.2f} / {big[1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
