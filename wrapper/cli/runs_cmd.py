"""`lfwrap runs`: list, inspect, follow, cancel and remove runs."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from wrapper.launch.runs import BoardRun
    from wrapper.launch.train import RunResult

LIST_HELP = """List runs, or inspect, follow, cancel or remove them.

Without a subcommand: a table of runs (name, template, status, progress, last loss, age), including
the runs trained in LLaMA Board (`lfwrap webui`), listed as <model>/<finetuning type>/<run> with
template "llamaboard": `runs show`, `runs logs`, `serve`, `export` and `eval` take them by that name
(read-only: `runs cancel` and `runs remove` leave them to LLaMA Board).

\b
Examples:
  $ lfwrap runs
  $ lfwrap runs show conch
  $ lfwrap runs logs conch --follow
  $ lfwrap runs cancel conch
  $ lfwrap runs remove conch
"""


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@click.group("runs", help=LIST_HELP, invoke_without_command=True)
@click.pass_context
def runs(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from wrapper.launch import runs as store
    from wrapper.launch.progress import read_progress
    from wrapper.launch.train import refresh

    table = Table("name", "template", "status", "progress", "last loss", "age", box=None)
    dirs = store.list_run_dirs()
    for run_dir in dirs:
        meta = refresh(run_dir)
        progress = read_progress(Path(meta.output_dir) / store.TRAINER_LOG)
        steps = f"{progress.step}/{progress.total}" if progress.total else "-"
        loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        lost = meta.status == "failed" and meta.error[:1] != [] and meta.error[0].startswith(store.LOST)
        status = f"{meta.status} (lost)" if lost else meta.status
        table.add_row(meta.name, meta.template or "-", status, steps, loss, _age(meta.created))
    board = store.llamaboard_runs()  # trained in LLaMA Board (`lfwrap webui`): listed, read-only
    for run in board:
        progress = read_progress(run.folder / store.TRAINER_LOG)
        steps = f"{progress.step}/{progress.total}" if progress.total else "-"
        loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        table.add_row(run.name, "llamaboard", run.status, steps, loss, _age(run.created))
    if not dirs and not board:
        click.echo("No runs yet; start one with `lfwrap train --template sft_lora`.")
        return
    Console(width=200).print(table)


@runs.command(
    "show",
    help="""Summarise a run: status, times, steps, final and best loss (and eval loss), a sparkline
of the loss, where its adapter, loss plot and evaluation reports are, and what to run next.
--json prints its meta.json instead.

\b
Examples:
  $ lfwrap runs show conch
  $ lfwrap runs show conch --json
  $ lfwrap runs show Custom/lora/train_2026-12-02-10-00-00     # trained in LLaMA Board
""",
)
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the run's meta.json.")
def show(run: str, as_json: bool) -> None:
    from wrapper.launch import board
    from wrapper.launch import runs as store
    from wrapper.launch.train import refresh, result

    if board.is_board_name(run):
        source = board.find_board_run(run)
        if as_json:
            details = {"name": source.name, "folder": str(source.folder), "status": source.status,
                       "created": source.created, "config": board.board_config(source)}  # fmt: skip
            click.echo(json.dumps(details, indent=2, ensure_ascii=False))
            return
        for line in board_summary_lines(source):
            click.echo(line)
        return
    run_dir = store.find_run(run)
    refresh(run_dir)
    outcome = result(run_dir)
    if as_json:
        click.echo(json.dumps(outcome.meta.to_dict(), indent=2, ensure_ascii=False))
        return
    for line in summary_lines(run_dir, outcome):
        click.echo(line)


def _took(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    finish = datetime.fromisoformat(end) if end else datetime.now(timezone.utc)
    seconds = int((finish - datetime.fromisoformat(start)).total_seconds())
    hours, rest = divmod(seconds, 3600)
    text = f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    return f" ({'took' if end else 'running for'} {text})"


def _loss_line(label: str, points: list[tuple[int, float]]) -> list[str]:
    from wrapper.launch.progress import sparkline

    if not points:
        return []
    best_step, best = min(points, key=lambda item: item[1])
    final, first = points[-1][1], points[0][1]
    return [
        f"{label:<11}final {final:.4f}, best {best:.4f} at step {best_step}, first {first:.4f}",
        f"{'':<11}{sparkline([value for _, value in points])}  ({len(points)} points, steps "
        f"{points[0][0]}-{points[-1][0]})",
    ]


def board_summary_lines(source: BoardRun) -> list[str]:
    """The readable `runs show` text of a run trained in LLaMA Board."""
    from wrapper.launch import board
    from wrapper.launch import runs as store
    from wrapper.launch.progress import read_progress

    progress = read_progress(source.folder / store.TRAINER_LOG)
    lines = [f"Run {source.name}: {source.status} (trained in LLaMA Board; its folder is read-only here)"]
    lines.append(f"{'saved':<11}{source.created}")
    if progress.total:
        lines.append(f"{'steps':<11}{progress.step}/{progress.total} ({progress.percentage:g}%)")
    lines += _loss_line("loss", progress.losses)
    lines += _loss_line("eval loss", progress.eval_losses)
    lines.append(f"{'run dir':<11}{source.folder}")
    lines.append(f"{'lfwrap dir':<11}{board.side_dir(source)}")
    lines.append("Next:")
    if source.status == "succeeded":
        lines += [f"  $ lfwrap {command} {source.name}" for command in ("eval", "serve", "export")]
        lines[-3] += " --dataset NAME"
    else:
        lines.append("  finish, resume or remove it in LLaMA Board (`lfwrap webui`)")
    return lines


def summary_lines(run_dir: Path, outcome: RunResult) -> list[str]:
    """The readable `runs show` text of a run."""
    from wrapper.evaluate.plan import EVAL_DIR, has_eval_split
    from wrapper.launch import runs as store

    meta, progress = outcome.meta, outcome.progress
    kind = "export" if meta.kind == "export" else None
    about = ", ".join(part for part in (meta.template, f"{meta.backend} backend", kind) if part)
    lines = [f"Run {meta.name}: {meta.status} ({about})"]
    lines.append(f"{'created':<11}{meta.created}")
    if meta.started:
        lines.append(f"{'started':<11}{meta.started}{'' if meta.ended else _took(meta.started, None)}")
    if meta.ended:
        lines.append(f"{'ended':<11}{meta.ended}{_took(meta.started, meta.ended)}")
    if progress.total:
        lines.append(f"{'steps':<11}{progress.step}/{progress.total} ({progress.percentage:g}%)")
    lines += _loss_line("loss", progress.losses)
    lines += _loss_line("eval loss", progress.eval_losses)
    for line in meta.error:
        lines.append(f"{'error':<11}{line}")
    lines.append(f"{'run dir':<11}{run_dir}")
    lines.append(f"{'log':<11}{run_dir / store.LOG_FILE}")
    if outcome.adapter:
        lines.append(f"{'adapter':<11}{outcome.adapter}")
    if outcome.loss_plot:
        lines.append(f"{'loss plot':<11}{outcome.loss_plot}")
    reports = sorted((run_dir / EVAL_DIR).glob("*/report.html"))
    if reports:
        lines.append(
            f"{'eval':<11}{reports[-1]}" + (f" (+{len(reports) - 1} earlier)" if len(reports) > 1 else "")
        )
    lines.append("Next:")
    name = meta.name
    if meta.status in ("queued", "running"):
        lines += [f"  $ lfwrap runs logs {name} --follow", f"  $ lfwrap runs cancel {name}"]
    elif meta.status == "succeeded" and meta.kind == "train":
        lines.append(f"  $ lfwrap eval {name}{'' if has_eval_split(run_dir) else ' --dataset NAME'}")
        lines += [f"  $ lfwrap serve {name}", f"  $ lfwrap export {name}"]
    else:
        lines.append(f"  $ lfwrap runs logs {name}")
        if store.last_checkpoint(Path(meta.output_dir)) is not None:
            lines.append(f"  $ lfwrap train --name {name} --resume")
        lines.append(f"  $ lfwrap runs remove {name}")
    return lines


def _refuse_board_run(name: str, action: str, instead: str) -> None:
    """RunError for a LLaMA Board run: lfwrap never writes its folder nor signals its processes."""
    from wrapper.errors import RunError
    from wrapper.launch import board

    if board.is_board_name(name):
        source = board.find_board_run(name)
        raise RunError(
            f"Run {source.name} was trained in LLaMA Board, which owns it; lfwrap does not {action} it: "
            f"{instead} ({source.folder})."
        )


@runs.command(
    "logs",
    help="""Print a run's train.log; --follow keeps printing until the run ends.

\b
Examples:
  $ lfwrap runs logs conch
  $ lfwrap runs logs conch --follow
""",
)
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
def logs(run: str, follow: bool) -> None:
    from wrapper.launch import board
    from wrapper.launch import runs as store
    from wrapper.launch.train import refresh

    if board.is_board_name(run):  # a LLaMA Board run: its log is LLaMA Board's running_log.txt, printed
        board_log = board.find_board_run(run).folder / "running_log.txt"
        text = board_log.read_text(encoding="utf-8", errors="replace") if board_log.is_file() else ""
        click.echo(text, nl=False)
        return
    run_dir = store.find_run(run)
    path = run_dir / store.LOG_FILE
    offset = 0
    while True:
        finished = refresh(run_dir).status in store.FINISHED  # read before the log: no line is missed
        if path.is_file():
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            click.echo(chunk.decode("utf-8", errors="replace"), nl=False)
        if not follow or finished:
            break
        time.sleep(0.5)
    if follow:
        click.echo(f"[run {run} {store.read_meta(run_dir).status}]", err=True)


@runs.command(
    "cancel",
    help="""Cancel a queued or running run, detached ones included: its whole
process group (or container) is stopped and its status becomes cancelled.

Nothing is signalled unless the run's recorded supervisor (pid, start time, boot id) is still
that process: a run whose supervisor is gone is shown as failed (lost) instead. Processes such a
run left behind (LLaMA-Factory still holding the run's lock) are stopped.

\b
Examples:
  $ lfwrap runs cancel conch
""",
)
@click.argument("run")
def cancel(run: str) -> None:
    from wrapper.launch import runs as store
    from wrapper.launch.train import cancel_run

    _refuse_board_run(run, "cancel", "stop it with LLaMA Board's Abort button")
    meta = cancel_run(store.find_run(run))
    click.echo(f"Run {meta.name} is {meta.status}.")


@runs.command(
    "remove",
    help="""Delete finished runs: their folders, with the adapter, checkpoints and copied data.

Asks first unless --yes is given (without a terminal, --yes is required). Queued or running runs are
refused; cancel them first. An output_dir set outside the run folder is left in place and named.

\b
Examples:
  $ lfwrap runs remove conch
  $ lfwrap runs remove old-1 old-2 --yes
""",
)
@click.argument("names", nargs=-1, required=True, metavar="RUN...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting.")
def remove(names: tuple[str, ...], yes: bool) -> None:
    import sys

    from wrapper.errors import UsageError
    from wrapper.launch import runs as store
    from wrapper.launch.train import folder_size, remove_run

    for name in names:
        _refuse_board_run(name, "remove", "delete its folder yourself if you no longer want it")
    folders = [store.find_run(name) for name in dict.fromkeys(names)]  # every name checked before any delete
    sizes = {folder: folder_size(folder) for folder in folders}
    listing = ", ".join(f"{folder.name} ({sizes[folder] / 1e6:.1f} MB)" for folder in folders)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"Deleting {listing} needs confirmation; add --yes to delete without asking.")
        click.confirm(f"Delete {listing}?", abort=True)
    for folder in folders:
        outside = remove_run(folder)
        click.echo(f"Removed run {folder.name} ({sizes[folder] / 1e6:.1f} MB).")
        if outside is not None:
            click.echo(f"  its output_dir {outside} is outside the run folder and was left in place.")
