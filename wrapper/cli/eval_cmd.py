"""`lfwrap eval`: base vs fine-tuned on held-out rows, with a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wrapper.cli.options import dataset_option, out_option, renamed

if TYPE_CHECKING:
    from wrapper.evaluate.execute import Event
    from wrapper.evaluate.plan import EvalPlan

HELP = """Compare a finished run's fine-tuned model with its base model on held-out rows.

Runs LLaMA-Factory's own predict path (do_predict + predict_with_generate, greedy, the run's chat
template) and a do_eval pass for the loss, for both models on the same rows, in one LLaMA-Factory
process. Reports BLEU-4 and ROUGE-1/2/L (LLaMA-Factory's), exact match, mean answer length and eval
loss, and writes RUN/eval/<time>/ (or --out): report.html (metrics, loss curves, sample answers with
differences marked), loss.png, metrics.json and predictions.jsonl.

A run trained in LLaMA Board is named as `lfwrap runs` lists it (<model>/<finetuning type>/<run>); its
report goes to $LFWRAP_HOME/llamaboard/<that name>/eval/<time>/ (its own folder is never written to).

Rows: the run's own eval split (eval_dataset, or the val_size split it held out) unless --dataset
names registered datasets.

--rag-index INDEX also runs the fine-tuned model on the same --dataset rows grounded in a `lfwrap rag` index
(the chunks retrieved for each question merged into its system prompt, as the gateway does):
metrics.json gets "tuned_rag" next to "tuned", and "rag" (index, top_k, rows_with_sources).

\b
Examples:
  $ lfwrap eval conch --dataset identity
  $ lfwrap eval conch --dataset alpaca_demo,identity --max-samples 50 --json
  $ lfwrap eval conch                          # a run trained with --set val_size=0.1
  $ lfwrap eval conch --no-base --out reports/conch
  $ lfwrap eval conch --dataset menu_qa --rag-index krusty-docs --no-base
  $ lfwrap eval Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00 --dataset identity
"""


@click.command("eval", help=HELP)
@click.argument("run")
@dataset_option
@click.option(
    "--max-samples", type=click.IntRange(min=1), metavar="N", help="At most the first N rows of each dataset."
)
@click.option("--no-base", is_flag=True, help="Evaluate the fine-tuned model only.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json (progress goes to stderr).")
@out_option("Report folder (new or empty) [default: RUN/eval/<time>].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), metavar="N", help="Longest answer [512].")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Prompts per batch [the run's eval batch, else 8].",
)
@click.option(
    "--rag-index",
    "rag",
    metavar="INDEX",
    help="Also run the fine-tuned model grounded in this `lfwrap rag` index.",
)
@click.option(
    "--rag-top-k",
    type=click.IntRange(min=1, max=100),
    default=4,
    show_default=True,
    help="Chunks per question.",
)
@renamed("--rag", "--rag-index", "rag", metavar="INDEX")
def eval_(
    run: str,
    dataset: str | None,
    max_samples: int | None,
    no_base: bool,
    as_json: bool,
    out: Path | None,
    max_new_tokens: int | None,
    batch_size: int | None,
    rag: str | None,
    rag_top_k: int,
) -> None:
    from wrapper.evaluate.metrics import collect
    from wrapper.evaluate.plan import plan_eval
    from wrapper.evaluate.report import write_report
    from wrapper.launch.process import sigterm_as_interrupt

    plan = plan_eval(
        run,
        datasets=dataset,
        max_samples=max_samples,
        base=not no_base,
        out=out,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        rag=rag,
        rag_top_k=rag_top_k,
    )
    sigterm_as_interrupt()
    _run_with_progress(plan)
    metrics, rows = collect(plan)
    page = write_report(plan, metrics, rows)
    if as_json:
        click.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
        return
    _print_summary(metrics, rows, page)


def _run_with_progress(plan: EvalPlan) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wrapper.evaluate.execute import run_plan

    console = Console(stderr=True)
    labels = {"predict": "generating", "loss": "eval loss"}
    names = {"base": "base", "tuned": "fine-tuned", "tuned_rag": "fine-tuned + RAG"}
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    tasks = {
        item.name: bar.add_task(f"{names[item.model]}: {labels[item.kind]}", total=None, start=False)
        for item in plan.passes
    }

    def update(event: Event) -> None:
        task = tasks.get(event.job)
        if task is None:
            return
        if event.event == "start":
            bar.start_task(task)
        elif event.event == "step":
            bar.update(task, completed=event.step, total=event.total or None)
        elif event.event == "end":
            total = bar.tasks[task].total or bar.tasks[task].completed or 1
            bar.update(task, completed=total, total=total)

    console.print(f"Evaluating run {plan.run} on {plan.data_note}; report in {plan.out}")
    try:
        with bar:
            run_plan(plan, update)
    except KeyboardInterrupt:
        console.print(f"Evaluation cancelled; partial outputs are in {plan.out}.")
        raise


def _print_summary(metrics: dict[str, Any], rows: list[dict[str, Any]], page: Path) -> None:
    from wrapper.evaluate.metrics import with_lengths
    from wrapper.evaluate.report import ROWS

    figures = with_lengths(metrics, rows)
    base, tuned, rag = figures["base"], figures["tuned"], figures.get("tuned_rag")
    assert tuned is not None
    click.echo(f"Run {metrics['run']} on {metrics['dataset']} ({metrics['samples']} rows):")
    columns: tuple[str, ...] = ("base", "fine-tuned", "change") if base else ("fine-tuned",)
    columns += ("+ RAG",) if rag else ()
    click.echo(f"  {'metric':<28}" + "".join(f"{name:>12}" for name in columns))
    for key, label, _ in ROWS:
        line = f"  {label:<28}"
        if base:
            line += f"{base[key]:>12.4g}{tuned[key]:>12.4g}{tuned[key] - base[key]:>+12.4g}"
        else:
            line += f"{tuned[key]:>12.4g}"
        click.echo(line + (f"{rag[key]:>12.4g}" if rag else ""))
    if rag:
        info = metrics["rag"]
        click.echo(
            f"+ RAG: index {info['index']}, top {info['top_k']} chunks; {info['rows_with_sources']} of "
            f"{metrics['samples']} rows had sources (the HTML report shows base and fine-tuned only)."
        )
    click.echo(f"Report: {page}")
    click.echo(f"  loss plot, metrics.json and predictions.jsonl are next to it in {page.parent}")
