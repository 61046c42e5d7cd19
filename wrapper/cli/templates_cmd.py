"""`lfwrap templates`: list the config templates, or show one's variables and rendered YAML."""

from __future__ import annotations

from collections.abc import Sequence

import click

HELP = """List the config templates (bundled and your own), or show one's variables.

Your own templates live in $LFWRAP_HOME/templates/NAME.yaml.j2; one named like a bundled
template replaces it.

\b
Examples:
  $ lfwrap templates
  $ lfwrap templates show sft_lora
  $ lfwrap render --template sft_lora --set lora_rank=16
"""

SHOW_HELP = """Show a template's variables (default and help) and the YAML it renders with defaults.

\b
Examples:
  $ lfwrap templates show dpo_lora
  $ lfwrap render --template dpo_lora --set pref_beta=0.2 -o dpo.yaml
"""


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _show_list() -> None:
    from wrapper.render import list_templates

    rows: list[tuple[str, ...]] = [("NAME", "KIND", "COMMAND", "DESCRIPTION")]
    rows += [(t.name, t.kind, t.command, t.description) for t in list_templates()]
    click.echo(_table(rows))


@click.group("templates", help=HELP, invoke_without_command=True)
@click.pass_context
def templates(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is None:
        _show_list()


@templates.command("list", help="List the config templates.\n\n\b\nExamples:\n  $ lfwrap templates list")
def list_cmd() -> None:
    _show_list()


@templates.command("show", help=SHOW_HELP)
@click.argument("name")
def show(name: str) -> None:
    from wrapper.render import get_template, render_template, yaml_value

    info = get_template(name)
    click.echo(f"{info.name} ({info.kind}): {info.description}")
    click.echo(f"Used by: {info.command}    File: {info.path}")
    click.echo("")
    if info.variables:
        rows: list[tuple[str, ...]] = [("VARIABLE", "DEFAULT", "HELP")]
        rows += [(var, yaml_value(spec.default), spec.help) for var, spec in info.variables.items()]
        click.echo(_table(rows))
    else:
        click.echo("(no variables; any LLaMA-Factory key can still be given with --set)")
    click.echo("")
    rendered = render_template(name)  # a failure is reported by the CLI, after the variables above
    click.echo("Rendered with defaults:")
    click.echo(rendered.text, nl=False)
    for problem in rendered.problems:
        click.echo(f"  {problem}", err=True)
