"""`lfwrap demo-model`: build the tiny demo Llama locally."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.cli.options import out_option
from wrapper.home import models_dir

HELP = """Build the tiny demo Llama and its tokenizer locally (no download, same bytes every time).

The model (2 layers, hidden 64, byte-level BPE of ~340 tokens trained on the bundled datasets)
knows nothing until trained; LoRA on the identity set teaches it the identity answer in seconds
on a CPU. Use the printed path as --model with --set template=default.

\b
Examples:
  $ lfwrap demo-model
  $ lfwrap demo-model --out ./tiny-llama
  $ lfwrap train --template sft_lora --model ~/.lfwrap/models/tiny-llama --set template=default
"""


@click.command("demo-model", help=HELP)
@out_option("Where to write the model (default: $LFWRAP_HOME/models/tiny-llama).")
def demo_model(out: Path | None) -> None:
    from wrapper.demo_model import build_demo_model

    target = out if out is not None else models_dir() / "tiny-llama"
    path = build_demo_model(target)
    click.echo(f"Tiny demo model written to {path}")
