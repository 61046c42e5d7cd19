"""`lfwrap validate`: check LLaMA-Factory YAML configs before launching them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wrapper.cli.options import no_data_check_option
from wrapper.validate import validate_file

HELP = """Check any LLaMA-Factory YAML config, ours or hand-written, in well under a second.

Reports every problem at once as `file:line: error: ...`: unknown keys (with "did you mean"),
wrong types, values outside the allowed set, keys the stage requires, unknown chat templates,
datasets missing from dataset_dir's dataset_info.json, preference stages (dpo, kto, rm) on the
wrong kind of dataset, duplicate keys and YAML tags, local model paths that do not exist, and files
that are not LLaMA-Factory configs at all (accelerate, DeepSpeed, v1, Megatron). Relative paths are
taken from the working directory, as llamafactory-cli does (dataset_dir defaults to `data`).

Every row of each local dataset the config names (dataset, eval_dataset) is checked with its
dataset_info.json entry (formatting, ranking, columns, tags, kto_tag, media files); bad rows are
listed with their row numbers. Results are cached by file size and mtime in
data-check.json in lfwrap's cache folder (~/.cache/lfwrap, or $LFWRAP_CACHE_DIR) for files of 4 MiB and
up, the one file validate may write; --no-data-check skips the rows.
Stage ppo is refused: LLaMA-Factory 0.9.5 cannot run it. Exit status 1 when any error is found;
warnings alone exit 0.
"""

EXAMPLES = """\b
Examples:
  $ lfwrap validate my_config.yaml
  $ lfwrap validate examples/train_lora/llama3_lora_sft.yaml    # in LLaMA-Factory's repo root
  $ lfwrap validate big_data.yaml --no-data-check
  $ lfwrap validate train.yaml infer.yaml merge.yaml
  $ lfwrap render --template dpo_lora -o dpo.yaml && lfwrap validate dpo.yaml
"""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@click.command(help=HELP, epilog=EXAMPLES)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print only problems and the summary.")
@no_data_check_option
def validate(files: tuple[Path, ...], quiet: bool, no_data_check: bool) -> None:
    errors = warnings = 0
    for path in files:
        problems = validate_file(path, data_check=not no_data_check)
        for problem in problems:
            click.echo(str(problem))
        file_errors = sum(p.severity == "error" for p in problems)
        errors += file_errors
        warnings += len(problems) - file_errors
        if not problems and not quiet:
            click.echo(f"{path}: ok")
    verdict = "FAILED" if errors else "ok"
    click.echo(
        f"{_plural(len(files), 'file')} checked: {_plural(errors, 'error')}, "
        f"{_plural(warnings, 'warning')} ({verdict})"
    )
    if errors:
        sys.exit(1)  # SystemExit passes through click's non-standalone main unchanged
