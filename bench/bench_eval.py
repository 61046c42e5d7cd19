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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinyrun import LFWRAP, ROOT, Scratch, bare_train, in_scratch, timed  # noqa: E402

ROWS = ["--dataset", "identity", "--max-samples", "8", "--max-new-tokens", "64"]


def by_hand(report: Path, models: list[str], work: Path, env: dict[str, str]) -> float:
    """`llamafactory-cli train` on each model's predict config from `report`, into fresh folders."""
    total = 0.0
    for model in models:
        config = report / f"{model}-predict" / "config.yaml"
        total += bare_train(config, work / f"{report.name}-hand-{model}", env, "predict.yaml")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    in_scratch("bench_eval_", lambda scratch: bench(scratch, rounds))


def bench(scratch: Scratch, rounds: int) -> None:
    work, env, lfwrap = scratch.work, scratch.env, LFWRAP
    train = ["train", "-t", "sft_lora", "--model", str(scratch.model), "--dataset", scratch.dataset]
    timed([*lfwrap, *train, *scratch.sets, "--name", "bench"], env, ROOT)
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
