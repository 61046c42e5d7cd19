"""`lfwrap export`: merge a run's LoRA adapter into a standalone model folder."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.cli.options import backend_option, out_option, set_option

HELP = """Merge a finished run's LoRA adapter into its base model (the merge_lora template and
`llamafactory-cli export`) and write a standalone model folder that transformers, vLLM or
`lfwrap serve --model` load without the adapter. A run trained in LLaMA Board is named as
`lfwrap runs` lists it; its merged model goes to $LFWRAP_HOME/llamaboard/<that name>/merged by default
(its own folder is never written to).

\b
Examples:
  $ lfwrap export conch                              # -> $LFWRAP_HOME/runs/conch/merged
  $ lfwrap export conch --out ./conch-merged
  $ lfwrap export conch -o ./conch-merged --force     # replace what an earlier export wrote there
  $ lfwrap export conch --set export_size=2 --backend docker
  $ lfwrap export Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00   # trained in LLaMA Board
  $ lfwrap serve --model ./conch-merged --chat-template default
"""


@click.command("export", help=HELP)
@click.argument("run")
@out_option("Folder for the merged model (default: the run's `merged` folder).")
@set_option
@backend_option
@click.option("--force", is_flag=True, help="Write into an --out folder that is not empty.")
def export(run: str, out: Path | None, sets: tuple[str, ...], backend: str, force: bool) -> None:
    from wrapper.launch.board import find_any_run
    from wrapper.launch.export import export_run

    find_any_run(run)  # an unknown name fails here, before the progress line

    click.echo(f"Merging the adapter of run {run} ...", err=True)
    target = export_run(run, out, sets=sets, backend=backend, force=force)
    click.echo(f"Merged model written to {target}")
    click.echo(f"  $ lfwrap serve --model {target}")
