"""Wall time of `lfwrap train` against bare `llamafactory-cli train` on the same rendered config.

The tiny demo model and the 2-row identity set with the settings of the demo, interleaved
(lfwrap, bare, lfwrap, bare, ...) in one run so both see the same machine load. lfwrap adds
rendering, validation, the run directory, the supervisor and progress following; the goal is
at most 1.05x the bare time.

    python bench/bench_train.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinyrun import LFWRAP, ROOT, Scratch, bare_train, in_scratch, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    in_scratch("bench_train_", lambda scratch: bench(scratch, rounds))


def bench(scratch: Scratch, rounds: int) -> None:
    work, env = scratch.work, scratch.env
    lfwrap = [*LFWRAP, "train", "--template", "sft_lora", "--model", str(scratch.model)]
    lfwrap += ["--dataset", scratch.dataset, *scratch.sets]

    # LLaMA-Factory runs from the bytecode pip compiled at install; give lfwrap's checkout the same, since
    # with PYTHONDONTWRITEBYTECODE set Python would otherwise recompile its sources on every start.
    compileall.compile_dir(ROOT / "wrapper", quiet=1)
    wrapped: list[float] = []
    bare: list[float] = []
    for index in range(rounds):
        name = f"bench-{index}"
        wrapped.append(timed([*lfwrap, "--name", name], env, ROOT))
        bare.append(bare_train(work / "home" / "runs" / name / "config.yaml", work / f"bare-{index}", env))
        print(
            f"round {index + 1}: lfwrap train {wrapped[-1]:.2f} s, bare llamafactory-cli {bare[-1]:.2f} s",
            flush=True,
        )

    w, b = statistics.median(wrapped), statistics.median(bare)
    for label, times, middle in (("lfwrap train    ", wrapped, w), ("llamafactory-cli", bare, b)):
        listed = ", ".join(f"{t:.2f}" for t in times)
        print(f"{label} median {middle:.2f} s, best {min(times):.2f} s  (runs: {listed})")
    # On a shared machine the best of each side is the figure least disturbed by other load.
    print(
        f"bench_train: lfwrap/bare = {min(wrapped) / min(bare):.3f}x best, {w / b:.3f}x median "
        f"({rounds} interleaved pairs; goal <= 1.05x)"
    )


if __name__ == "__main__":
    main()
