"""`lfwrap runs`: list, inspect, follow, cancel and remove runs."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import click

LIST_HELP = """List runs, or inspect, follow, cancel or remove them.

Without a subcommand: a table of runs (name, template, status, progress, last loss, age).

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
    if not dirs:
        click.echo("No runs yet; start one with `lfwrap train --template sft_lora`.")
        return
    Console(width=200).print(table)


@runs.command(
    "show",
    help="""Show a run's metadata, progress and files.

\b
Examples:
  $ lfwrap runs show conch
""",
)
@click.argument("run")
def show(run: str) -> None:
    from wrapper.launch import runs as store
    from wrapper.launch.train import refresh, result

    run_dir = store.find_run(run)
    refresh(run_dir)
    outcome = result(run_dir)
    click.echo(json.dumps(outcome.meta.to_dict(), indent=2, ensure_ascii=False))
    progress = outcome.progress
    click.echo(f"progress:  {progress.step}/{progress.total} steps, last loss {progress.loss}")
    click.echo(f"run dir:   {run_dir}")
    click.echo(f"log:       {run_dir / store.LOG_FILE}")
    if outcome.adapter:
        click.echo(f"adapter:   {outcome.adapter}")
    if outcome.loss_plot:
        click.echo(f"loss plot: {outcome.loss_plot}")


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
    from wrapper.launch import runs as store
    from wrapper.launch.train import refresh

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
