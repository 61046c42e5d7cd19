"""Run LLaMA-Factory configs one after another in one process: `python runner.py JOBS.json PROGRESS.jsonl`.

JOBS.json lists {"name": ..., "config": "path/to/config.yaml"}; each config is exactly what
`llamafactory-cli train config.yaml` would run (read the same way, with OmegaConf), handed to
LLaMA-Factory's own entry point `run_exp`. One process for every pass pays LLaMA-Factory's ~11 s of
imports once instead of once per pass.

PROGRESS.jsonl gets one line per event: {"job", "event": "start" | "step" | "end", "step", "total"}.

This file is run by the Python that has llamafactory installed, which need not have lfwrap: it imports
nothing but the standard library, LLaMA-Factory and what LLaMA-Factory brings (omegaconf, transformers).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def release_memory() -> None:
    """Drop the finished pass's model before the next one loads (on a GPU, give its memory back)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(jobs_path: str, progress_path: str) -> int:
    from llamafactory.train.tuner import run_exp
    from omegaconf import OmegaConf
    from transformers import TrainerCallback

    with open(jobs_path, encoding="utf-8") as handle:
        jobs = json.load(handle)
    progress = open(progress_path, "a", encoding="utf-8", buffering=1)  # line-buffered: read while it runs

    def report(**event: Any) -> None:
        progress.write(json.dumps(event) + "\n")

    class Progress(TrainerCallback):
        """One line per prediction step (a batch), with the number of batches."""

        def __init__(self, job: str) -> None:
            self.job = job
            self.step = 0

        def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            loader = kwargs.get("eval_dataloader")
            try:
                total = len(loader) if loader is not None else 0
            except TypeError:
                total = 0
            self.step += 1
            report(job=self.job, event="step", step=self.step, total=total)

    for job in jobs:
        report(job=job["name"], event="start", step=0, total=0)
        args = OmegaConf.to_container(OmegaConf.load(job["config"]))  # as `llamafactory-cli train` reads it
        run_exp(args, callbacks=[Progress(job["name"])])
        report(job=job["name"], event="end", step=0, total=0)
        release_memory()
    progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
