"""`lfwrap render`: render a template to a validated LLaMA-Factory YAML."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.cli.options import out_option, renamed, set_option, template_option
from wrapper.errors import UsageError

HELP = """Render a template to a LLaMA-Factory YAML, validated against LLaMA-Factory's schema.

--set KEY=VALUE (repeatable) sets a template variable or adds any LLaMA-Factory key; values are
typed by the schema (int, float, bool, null, comma lists). Warnings go to stderr; any error
exits with a non-zero status (2: a wrong option, 1: a config error) and writes nothing.

\b
Examples:
  $ lfwrap render --template sft_lora
  $ lfwrap render --template sft_lora --set lora_rank=16 --set learning_rate=5e-5 -o sft.yaml
  $ lfwrap render -t sft_lora --out configs/sft.yaml
  $ lfwrap render --template dpo_lora --set pref_beta=0.2 --set pref_loss=ipo
  $ lfwrap render --template infer --set adapter_name_or_path=saves/sft_lora
"""


@click.command("render", help=HELP)
@template_option(required=True)
@set_option
@out_option("Write the YAML to this file instead of printing it.", file=True, dest="output")
@renamed("--output", "--out", "output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
def render(template: str, sets: tuple[str, ...], output: Path | None) -> None:
    from wrapper.render import render_template

    rendered = render_template(template, sets)
    for problem in rendered.problems:
        click.echo(f"  {problem}", err=True)
    if output is None:
        click.echo(rendered.text, nl=False)
        return
    if not output.parent.is_dir():
        raise UsageError(f"Cannot write {output}: folder {output.parent} does not exist; create it first.")
    from wrapper.fileio import write_atomic

    write_atomic(output, rendered.text)
    click.echo(f"Wrote {output}", err=True)
