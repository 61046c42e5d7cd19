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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        bench(work, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, rounds: int) -> None:
    env = {**os.environ, "LFWRAP_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(LFWRAP_HOME=env["LFWRAP_HOME"])
    from wrapper.demo import DEMO_TRAIN_SETS, prepare_identity_demo
    from wrapper.demo_model import build_demo_model
    from wrapper.launch.local import llamafactory_cli

    model = build_demo_model(work / "tiny-llama")
    dataset = prepare_identity_demo()
    sets = [arg for item in DEMO_TRAIN_SETS for arg in ("--set", item)]
    lfwrap = [
        sys.executable,
        "-m",
        "wrapper.cli.main",
        "train",
        "--template",
        "sft_lora",
        "--model",
        str(model),
        "--dataset",
        dataset,
        *sets,
    ]

    # LLaMA-Factory runs from the bytecode pip compiled at install; give lfwrap's checkout the same, since
    # with PYTHONDONTWRITEBYTECODE set Python would otherwise recompile its sources on every start.
    compileall.compile_dir(ROOT / "wrapper", quiet=1)
    wrapped: list[float] = []
    bare: list[float] = []
    for index in range(rounds):
        name = f"bench-{index}"
        wrapped.append(timed([*lfwrap, "--name", name], env, ROOT))
        config = yaml.safe_load((work / "home" / "runs" / name / "config.yaml").read_text())
        folder = work / f"bare-{index}"
        folder.mkdir()
        config["output_dir"] = str(folder / "output")  # the same config, a fresh output folder
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        bare.append(timed([llamafactory_cli(), "train", "config.yaml"], env, folder))
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
