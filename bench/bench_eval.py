"""Wall time of `lfwrap eval` against running LLaMA-Factory's predict configs by hand on the same rows.

The tiny demo model LoRA-trained on the 2-row identity set (the demo's settings), evaluated on the first
8 rows of the identity set with answers of at most 64 new tokens:

    lfwrap eval          base and fine-tuned: predict and eval-loss passes (4) in one LLaMA-Factory
                         process, plus metrics, loss.png and report.html
    by hand              `llamafactory-cli train` on the two predict configs lfwrap wrote (base, tuned):
                         generations and BLEU/ROUGE only, no eval loss, no report
    lfwrap eval --no-base  against one predict config by hand (the fine-tuned model)

Interleaved (lfwrap, by hand, ...) in one run so both see the same machine load; goal <= 1.1x.

    python bench/bench_eval.py [--rounds 2]
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
ROWS = ["--dataset", "identity", "--max-samples", "8", "--max-new-tokens", "64"]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def by_hand(report: Path, models: list[str], work: Path, env: dict[str, str]) -> float:
    """`llamafactory-cli train` on each model's predict config from `report`, into fresh folders."""
    from wrapper.launch.local import llamafactory_cli

    total = 0.0
    for model in models:
        config = yaml.safe_load((report / f"{model}-predict" / "config.yaml").read_text(encoding="utf-8"))
        folder = work / f"{report.name}-hand-{model}"
        folder.mkdir()
        config["output_dir"] = str(folder / "output")
        (folder / "predict.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        total += timed([llamafactory_cli(), "train", "predict.yaml"], env, folder)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        bench(work, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, rounds: int) -> None:
    env = {**os.environ, "LFWRAP_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(LFWRAP_HOME=env["LFWRAP_HOME"])
    from wrapper.demo import DEMO_TRAIN_SETS, prepare_identity_demo
    from wrapper.demo_model import build_demo_model

    model = build_demo_model(work / "tiny-llama")
    dataset = prepare_identity_demo()
    lfwrap = [sys.executable, "-m", "wrapper.cli.main"]
    sets = [arg for item in DEMO_TRAIN_SETS for arg in ("--set", item)]
    train = ["train", "-t", "sft_lora", "--model", str(model), "--dataset", dataset, *sets, "--name", "bench"]
    timed([*lfwrap, *train], env, ROOT)
    compileall.compile_dir(ROOT / "wrapper", quiet=1)  # as pip compiled LLaMA-Factory's bytecode

    results: dict[str, tuple[list[float], list[float]]] = {"base+tuned": ([], []), "tuned only": ([], [])}
    for index in range(rounds):
        for label, extra, models in (
            ("base+tuned", [], ["base", "tuned"]),
            ("tuned only", ["--no-base"], ["tuned"]),
        ):
            report = work / f"eval-{index}-{models[0]}"
            wrapped = timed(
                [*lfwrap, "eval", "bench", *ROWS, *extra, "--json", "--out", str(report)], env, ROOT
            )
            hand = by_hand(report, models, work, env)
            results[label][0].append(wrapped)
            results[label][1].append(hand)
            print(f"round {index + 1} {label}: lfwrap eval {wrapped:.2f} s, by hand {hand:.2f} s", flush=True)

    summary = []
    for label, (wrapped, hand) in results.items():
        w, h = statistics.median(wrapped), statistics.median(hand)
        print(
            f"{label}: lfwrap eval median {w:.2f} s best {min(wrapped):.2f} s; "
            f"by hand median {h:.2f} s best {min(hand):.2f} s"
        )
        summary.append(f"{label} {min(wrapped) / min(hand):.3f}x best, {w / h:.3f}x median")
    figures = "; ".join(summary)
    print(f"bench_eval: lfwrap eval / predict configs by hand = {figures} ({rounds} rounds; goal <= 1.1x)")


if __name__ == "__main__":
    main()
