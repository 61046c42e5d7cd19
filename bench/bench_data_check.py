"""Throughput of `lfwrap data check` on a generated alpaca JSONL, next to a bare json-parse loop.

Generates a ~200 MB alpaca JSONL (Chinese and English rows, some with history and system) with
one bad row near the end, in a temp folder deleted afterwards. Times, in the same run:
  - `lfwrap data check FILE` as a subprocess, i.e. what a user waits for (start-up included);
  - a bare `json.loads` per line loop over the same file (in this process, no checks at all).
Prints MB/s for both and their ratio; the last line is a one-line summary. Goal: >= 100 MB/s.

    python bench/bench_data_check.py [--mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

GOAL_MB_S = 100.0


def generate(path: Path, target_bytes: int) -> tuple[int, int]:
    """Write rows until target_bytes; one bad row (no output) at ~99.5 %. Returns (rows, bad row number)."""
    rng = random.Random(0)
    words_en = "the model learns from examples and answers questions about data training".split()
    words_zh = list("模型从示例中学习并回答关于数据和训练的问题")
    rows = 0
    written = 0
    bad_row = 0
    with path.open("wb") as handle:
        while written < target_bytes:
            rows += 1
            zh = rows % 3 == 0
            pick = words_zh if zh else words_en
            sep = "" if zh else " "
            row: dict = {
                "instruction": sep.join(rng.choices(pick, k=rng.randint(5, 30))),
                "input": sep.join(rng.choices(pick, k=rng.randint(0, 20))),
                "output": sep.join(rng.choices(pick, k=rng.randint(20, 120))),
            }
            if rows % 10 == 0:
                row["history"] = [["what is it?", "an example."], ["and then?", "more examples."]]
            if rows % 7 == 0:
                row["system"] = "You are a helpful assistant."
            if not bad_row and written > target_bytes * 0.995:
                del row["output"]
                bad_row = rows
            line = orjson.dumps(row) + b"\n"
            handle.write(line)
            written += len(line)
    return rows, bad_row


def time_cli(path: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", "data", "check", str(path)], capture_output=True, text=True
    )
    return time.perf_counter() - start, proc


def time_bare(path: Path) -> float:
    start = time.perf_counter()
    loads = json.loads
    with path.open("rb") as handle:
        for line in handle:
            loads(line)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the generated file in MB")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_data_check_") as tmp:
        path = Path(tmp) / "alpaca.jsonl"
        rows, bad_row = generate(path, int(args.mb * 1e6))
        size_mb = path.stat().st_size / 1e6
        print(f"file: {size_mb:.1f} MB, {rows} rows, bad row {bad_row}")

        cli_times, bare_times = [], []
        proc = None
        for _ in range(args.repeat):  # alternate, so both see the same machine load
            elapsed, proc = time_cli(path)
            cli_times.append(elapsed)
            bare_times.append(time_bare(path))
        assert proc is not None
        expected = f"row {bad_row} (line {bad_row}): 'output' missing"
        if proc.returncode != 1 or expected not in proc.stdout:
            sys.exit(f"lfwrap data check did not report the bad row:\n{proc.stdout}\n{proc.stderr}")
        print(f"lfwrap data check reported: {expected}")

    cli_s, bare_s = min(cli_times), min(bare_times)
    cli_rate, bare_rate = size_mb / cli_s, size_mb / bare_s
    print(
        f"lfwrap data check (subprocess, all rules): {cli_s:.2f} s, {cli_rate:.0f} MB/s  "
        f"(runs: {', '.join(f'{t:.2f}' for t in cli_times)} s)"
    )
    print(
        f"bare json.loads loop (no checks):          {bare_s:.2f} s, {bare_rate:.0f} MB/s  "
        f"(runs: {', '.join(f'{t:.2f}' for t in bare_times)} s)"
    )
    verdict = "met" if cli_rate >= GOAL_MB_S else "NOT met"
    print(
        f"summary: data check {cli_rate:.0f} MB/s vs bare json.loads {bare_rate:.0f} MB/s = "
        f"{cli_rate / bare_rate:.2f}x on {size_mb:.0f} MB; goal >= {GOAL_MB_S:.0f} MB/s {verdict}"
    )


if __name__ == "__main__":
    main()
