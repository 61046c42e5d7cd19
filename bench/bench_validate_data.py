"""What the row check costs `lfwrap validate`: a config naming a ~100 MB hand-registered alpaca dataset.

Times, in the same run, each as a fresh `lfwrap validate` subprocess (start-up included):
  - cold: every row read and checked (a fresh LFWRAP_HOME, so no cached verdict);
  - cached: the same config again (file size, mtime and entry unchanged: the verdict is read back);
  - --no-data-check: the config alone.
Prints MB/s of the cold check and the ratios, then one summary line.

    python bench/bench_validate_data.py [--mb 100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_check import generate  # noqa: E402  (the same generated alpaca rows, one bad)

CONFIG = """\
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
stage: sft
do_train: true
finetuning_type: lora
template: qwen
dataset: big
output_dir: saves/big
"""


def run(work: Path, home: Path, *extra: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "LFWRAP_HOME": str(home), "LFWRAP_CACHE_DIR": str(home / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", "validate", "cfg.yaml", *extra],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated dataset in MB")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_validate_data_") as tmp:
        work = Path(tmp) / "work"
        (work / "data").mkdir(parents=True)
        rows, bad_row = generate(work / "data" / "big.jsonl", int(args.mb * 1e6))
        (work / "data" / "dataset_info.json").write_text(json.dumps({"big": {"file_name": "big.jsonl"}}))
        (work / "cfg.yaml").write_text(CONFIG)
        size_mb = (work / "data" / "big.jsonl").stat().st_size / 1e6
        print(f"dataset: {size_mb:.1f} MB, {rows} rows, bad row {bad_row}")
        cold, cached, plain = [], [], []
        for attempt in range(args.repeat):
            home = Path(tmp) / f"home{attempt}"
            elapsed, proc = run(work, home)
            cold.append(elapsed)
            if f"row {bad_row} (line {bad_row}): 'output' missing" not in proc.stdout:
                sys.exit(f"validate did not report the bad row:\n{proc.stdout}\n{proc.stderr}")
            cached.append(run(work, home)[0])
            plain.append(run(work, home, "--no-data-check")[0])
    cold_s, cached_s, plain_s = min(cold), min(cached), min(plain)
    rate = size_mb / cold_s
    print(f"validate, rows checked (cold):   {cold_s:.2f} s, {rate:.0f} MB/s")
    print(f"validate, verdict cached:        {cached_s:.2f} s")
    print(f"validate --no-data-check:        {plain_s:.2f} s")
    print(
        f"summary: validate checks rows at {rate:.0f} MB/s ({size_mb:.0f} MB in {cold_s:.2f} s); cached "
        f"re-validate {cached_s:.2f} s = {cached_s / plain_s:.2f}x of --no-data-check ({plain_s:.2f} s)"
    )


if __name__ == "__main__":
    main()
