"""Running an EvalPlan: write its configs, run every pass in one LLaMA-Factory process, follow it.

plan.out/<model>-<kind>/config.yaml   what LLaMA-Factory ran (`llamafactory-cli train` takes it as is)
plan.out/<model>-<kind>/...            what it wrote: generated_predictions.jsonl, predict_results.json,
                                       eval_results.json
plan.out/jobs.json, progress.jsonl     the runner's input and its progress events
plan.out/eval.log                      LLaMA-Factory's full output
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrapper.errors import LaunchError
from wrapper.evaluate.plan import EvalPlan
from wrapper.evaluate.rag import write_rag_data
from wrapper.extras import require
from wrapper.launch.configfile import write_yaml
from wrapper.launch.local import cli_python, llamafactory_cli, missing_modules, spawn
from wrapper.launch.process import stop_group
from wrapper.launch.progress import error_lines

RUNNER = Path(__file__).with_name("runner.py")
LOG_FILE = "eval.log"
POLL_SECONDS = 0.2
# What LLaMA-Factory's ComputeSimilarity imports for BLEU-4 and ROUGE (its requirements/metrics.txt).
METRIC_MODULES = {"jieba": "jieba", "nltk": "nltk", "rouge_chinese": "rouge-chinese"}


@dataclass
class Event:
    job: str  # a Pass name, e.g. "tuned-predict"
    event: str  # "start" | "step" | "end"
    step: int = 0
    total: int = 0


def runner_command() -> list[str]:
    """The Python that runs llamafactory-cli, running runner.py; refused when it lacks the metric packages."""
    # lfwrap's own Python draws the report's loss plot, maybe not the one llamafactory-cli runs on
    require("local", "The eval report's loss plot", LaunchError, modules=["matplotlib"])
    python = cli_python(llamafactory_cli())
    missing = missing_modules(list(METRIC_MODULES), python)
    if missing:
        packages = " ".join(METRIC_MODULES[name] for name in missing)
        raise LaunchError(
            f"LLaMA-Factory's BLEU/ROUGE need {', '.join(missing)}, which {python} cannot import; install "
            f"them with `{Path(python).parent / 'pip'} install {packages}` (they come with lfwrap[local])."
        )
    return [python, str(RUNNER)]


def write_plan(plan: EvalPlan) -> Path:
    """Create the report folder with every pass's config and the runner's job list; the job list. Passes
    on lfwrap's registered datasets get their dataset_info.json written first, as creating a run does."""
    from wrapper.datasets.registry import is_lfwrap_dataset_dir, prepare_dataset_dir

    if any(
        is_lfwrap_dataset_dir(Path(item.config["dataset_dir"]))
        for item in plan.passes
        if item.config.get("dataset_dir")
    ):
        prepare_dataset_dir()
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.run_dir.mkdir(parents=True, exist_ok=True)  # a LLaMA Board run's side folder, with --out elsewhere
    if plan.rag is not None:
        write_rag_data(plan.out, plan.rag)
    jobs = []
    for item in plan.passes:
        folder = plan.folder(item)
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append({"name": item.name, "config": str(write_yaml(folder / "config.yaml", item.config))})
    path = plan.out / "jobs.json"
    path.write_text(json.dumps(jobs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class _Events:
    """Incremental reader of progress.jsonl."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def poll(self) -> list[Event]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next poll
        self.offset += end
        events = []
        for line in chunk[:end].splitlines():
            try:
                data: Any = json.loads(line)
                event = Event(str(data["job"]), str(data["event"]), int(data["step"]), int(data["total"]))
            except (ValueError, KeyError, TypeError):
                continue
            events.append(event)
        return events


def run_plan(plan: EvalPlan, on_event: Callable[[Event], None] | None = None) -> None:
    """Run every pass of `plan` in one LLaMA-Factory process; LaunchError with the error lines on failure.
    Ctrl-C (KeyboardInterrupt) stops the whole process group before it propagates."""
    command = runner_command()
    jobs = write_plan(plan)
    progress = plan.out / "progress.jsonl"
    log = plan.out / LOG_FILE
    # In the run folder, as training ran: relative paths in the run's config mean the same there.
    process = spawn([*command, str(jobs), str(progress)], cwd=plan.run_dir, log_path=log, env={})
    events = _Events(progress)
    try:
        while True:
            done = process.poll() is not None
            for event in events.poll():
                if on_event is not None:
                    on_event(event)
            if done:
                break
            try:
                process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        stop_group(process)
        raise
    if process.returncode != 0:
        lines = error_lines(log.read_text(encoding="utf-8", errors="replace"))
        raise LaunchError(
            f"Evaluating run {plan.run} failed (exit code {process.returncode}): {' / '.join(lines)}; "
            f"full log: {log}."
        )
