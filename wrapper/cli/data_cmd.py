"""`lfwrap data`: check, add, list and fill datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

FORMATTING = click.Choice(["alpaca", "sharegpt", "openai"])

columns_option = click.option(
    "--columns",
    "columns",
    multiple=True,
    metavar="K=V[,K=V]",
    help="Field names when they differ from LLaMA-Factory's defaults (e.g. prompt=question).",
)
tags_option = click.option(
    "--tags",
    "tags",
    multiple=True,
    metavar="K=V[,K=V]",
    help="Role tags for sharegpt/openai rows (e.g. user_tag=user).",
)


def columns_and_tags(command: Callable[..., Any]) -> Callable[..., Any]:
    """--columns and --tags, shared by `data check` and `data add`."""
    return columns_option(tags_option(command))


@click.group(
    help="""Check, register, list, remove and fill datasets.

Datasets live in $LFWRAP_HOME/datasets next to a dataset_info.json that LLaMA-Factory reads; the
bundled ones (identity, alpaca_demo, sharegpt_demo, dpo_demo, kto_demo) are always listed.
""",
    epilog="""\b
Examples:
  $ lfwrap data list
  $ lfwrap data check qa.jsonl --formatting alpaca
  $ lfwrap data add my_qa qa.jsonl --columns prompt=question,response=answer
  $ lfwrap data identity --name 神奇海螺 --author 蟹堡王
  $ lfwrap data remove my_qa
""",
)
def data() -> None:
    pass


@data.command(
    help="""Check every row of a JSON or JSONL data file, or of a registered dataset, streaming it.

Reports each bad row (row number, line, field, what is wrong), capped at --max-errors rows with a
count of the rest, then a summary (rows, turns, mean/max characters). Exit status 1 when any row
is bad. Without --formatting/--ranking/--pt/--columns/--tags the format is detected from the first
rows (alpaca, sharegpt, openai, ranking, kto or pt) and the assumption is printed first.
--dataset NAME checks a dataset registered in --dataset-dir's dataset_info.json (default: lfwrap's
datasets) with its own entry: formatting, ranking, columns, tags, kto_tag, and that its image/video/
audio files exist. Rules follow LLaMA-Factory: alpaca rows need string instruction/output (input,
system optional; history a list of [question, answer] pairs; with --ranking chosen/rejected instead
of output); sharegpt rows need a conversations list of from/value messages, an optional system
message first, then human/gpt turns alternating; openai rows need messages with role/content;
pt rows need their text column; kto_tag must be true or false. In a JSON array, a row that is not
valid JSON is reported and the check goes on at the next row when rows start their own lines (as
json.dump with indent writes them). A file named dataset_info.json is checked as LLaMA-Factory's
dataset registry instead (unknown keys, column and tag names, with "did you mean"). With --model (a
local model folder), rows longer than --cutoff-len tokens are counted, with length percentiles:
LLaMA-Factory truncates them silently.
""",
    epilog="""\b
Examples:
  $ lfwrap data check qa.jsonl
  $ lfwrap data check chats.json --formatting sharegpt
  $ lfwrap data check prefs.jsonl --ranking --max-errors 5
  $ lfwrap data check qa.jsonl --columns prompt=question,response=answer
  $ lfwrap data check corpus.jsonl --pt --columns prompt=text
  $ lfwrap data check --dataset dpo_en_demo --dataset-dir LLaMA-Factory/data
  $ lfwrap data check qa.jsonl --model ~/.lfwrap/models/tiny-llama --cutoff-len 128
  $ lfwrap data check my_data/dataset_info.json
""",
)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option("--formatting", type=FORMATTING, default=None, help="Row format (default: detected).")
@click.option("--ranking", is_flag=True, help="Preference data: chosen/rejected answers.")
@click.option("--pt", is_flag=True, help="Pre-training text: only the prompt column (default `text`).")
@click.option("--dataset", "dataset", metavar="NAME", help="Check a registered dataset with its own entry.")
@click.option(
    "--dataset-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder holding dataset_info.json for --dataset (default: lfwrap's datasets).",
)
@columns_and_tags
@click.option(
    "--max-errors",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many bad rows to list.",
)
@click.option("--model", metavar="DIR", help="Local model folder: count tokens with its tokenizer.")
@click.option(
    "--cutoff-len",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="With --model: rows longer than this many tokens are reported (LLaMA-Factory truncates them).",
)
def check(
    file: Path | None,
    formatting: str | None,
    ranking: bool,
    pt: bool,
    dataset: str | None,
    dataset_dir: Path | None,
    columns: tuple[str, ...],
    tags: tuple[str, ...],
    max_errors: int,
    model: str | None,
    cutoff_len: int,
) -> None:
    from wrapper.datasets.add import parse_pairs
    from wrapper.datasets.check import CheckReport, check_file, format_report
    from wrapper.datasets.info import COLUMN_NAMES, TAG_NAMES
    from wrapper.datasets.rows import make_spec
    from wrapper.errors import DatasetError, UsageError

    flags = formatting or ranking or pt or columns or tags
    if dataset:
        if file or flags:
            raise UsageError(
                "--dataset checks a dataset with its own entry; drop FILE and the format options."
            )
        _check_registered(dataset, dataset_dir, max_errors, model, cutoff_len)
        return
    if file is None:
        raise UsageError("Give a data FILE to check, or --dataset NAME for a registered dataset.")
    if dataset_dir:
        raise UsageError("--dataset-dir only applies with --dataset NAME.")
    if file.name == "dataset_info.json":  # the registry file itself: check its entries instead of rows
        from wrapper.datasets.info import read_dataset_info_checked

        entries, warnings = read_dataset_info_checked(file)
        for warning in warnings:
            click.echo(str(warning))
        click.echo(f"{file}: {len(entries)} dataset(s), every entry valid")
        return
    if flags:
        column_map = parse_pairs(columns, COLUMN_NAMES, "--columns")
        if pt and "prompt" not in column_map:
            column_map["prompt"] = "text"
        spec = make_spec(
            formatting or "alpaca",
            ranking=ranking,
            pt=pt,
            columns=column_map,
            tags=parse_pairs(tags, TAG_NAMES, "--tags"),
        )
    else:
        from wrapper.datasets.detect import detect_spec

        spec, assumed = detect_spec(file)
        click.echo(f"Assuming {assumed} from the first rows; pass --formatting (and --columns) to override.")
    report: CheckReport = check_file(file, spec=spec, max_errors=max_errors)
    for line in format_report(report, max_errors):
        click.echo(line)
    if model:
        _report_lengths([file], spec, model, cutoff_len)
    if not report.ok:
        what = f"{report.bad_rows} bad row(s) of {report.rows}" if report.bad_rows else "a syntax error"
        raise DatasetError(f"{file} has {what}; fix the rows listed above and check again.")


def _report_lengths(paths: list[Path], spec: Any, model: str, cutoff_len: int) -> None:
    from wrapper.datasets.lengths import token_lengths, tokenizer_file
    from wrapper.errors import UsageError

    tokenizer = tokenizer_file(model)
    if tokenizer is None:
        raise UsageError(
            f"--model {model}: no tokenizer.json there; give a local model folder with a fast tokenizer."
        )
    report = token_lengths(paths, spec, tokenizer, cutoff_len=cutoff_len)
    if report is None:
        raise UsageError("--model needs the `tokenizers` package; install lfwrap's `local` extra.")
    click.echo(report.summary())


def _check_registered(
    name: str, dataset_dir: Path | None, max_errors: int, model: str | None, cutoff_len: int
) -> None:
    from wrapper.datasets.check import check_file, format_report, head_rows
    from wrapper.datasets.verify import data_files, entry_source, registered_entry, spec_for_entry
    from wrapper.errors import DatasetError

    entry, folder = registered_entry(name, dataset_dir)
    source = entry_source(entry)
    if source != "file":
        click.echo(f"Dataset '{name}' is loaded from {source}; its rows can't be checked offline.")
        return
    files = data_files(name, entry, folder)
    json_files = [path for path in files if path.suffix.lower() in (".json", ".jsonl")]
    sample = head_rows(json_files[0], 20) if json_files else None
    spec = spec_for_entry(entry, stage=None, media_dir=folder, sample=sample)
    click.echo(f"Dataset '{name}': {spec.kind}, as its entry in {folder / 'dataset_info.json'} says.")
    bad = 0
    checked: list[Path] = []
    for path in files:
        if path.suffix.lower() not in (".json", ".jsonl"):
            click.echo(f"{path}: {path.suffix[1:]} file; lfwrap checks the rows of JSON / JSONL only")
            continue
        report = check_file(path, spec=spec, max_errors=max_errors)
        for line in format_report(report, max_errors):
            click.echo(line)
        bad += report.bad_rows + (1 if report.fatal else 0)
        checked.append(path)
    if model and checked:
        _report_lengths(checked, spec, model, cutoff_len)
    if bad:
        raise DatasetError(f"Dataset '{name}' has bad rows; fix the rows listed above and check again.")


@data.command(
    help="""Check a data file, copy it into $LFWRAP_HOME/datasets and register it as NAME.

NAME is letters, digits, '_', '-' or '.'; the file is copied to NAME.json / NAME.jsonl inside the
datasets folder and dataset_info.json is rewritten atomically, keeping every other entry. A
user dataset with the name of a bundled one replaces it. Nothing is registered when a row is bad.
NAME cannot be dataset_info or registry (lfwrap's own files). A file there that lfwrap did not
write, or an entry added to dataset_info.json by hand, is never replaced unless --force is given.
""",
    epilog="""\b
Examples:
  $ lfwrap data add my_qa qa.jsonl
  $ lfwrap data add my_qa qa.jsonl --columns prompt=question,response=answer
  $ lfwrap data add chats chats.json --formatting sharegpt
  $ lfwrap data add prefs prefs.jsonl --ranking
  $ lfwrap data add hand hand.jsonl --force     # replace a hand-added entry or file of that name
""",
)
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--formatting", type=FORMATTING, default="alpaca", show_default=True, help="Row format.")
@click.option("--ranking", is_flag=True, help="Preference data: chosen/rejected answers.")
@columns_and_tags
@click.option("--description", default="", help="One line shown by `lfwrap data list`.")
@click.option("--force", is_flag=True, help="Replace a file or hand-added entry lfwrap did not write.")
def add(
    name: str,
    file: Path,
    formatting: str,
    ranking: bool,
    columns: tuple[str, ...],
    tags: tuple[str, ...],
    description: str,
    force: bool,
) -> None:
    from wrapper.datasets.add import add_dataset, parse_pairs
    from wrapper.datasets.info import COLUMN_NAMES, TAG_NAMES

    added = add_dataset(
        name,
        file,
        formatting=formatting,
        ranking=ranking,
        columns=parse_pairs(columns, COLUMN_NAMES, "--columns"),
        tags=parse_pairs(tags, TAG_NAMES, "--tags"),
        description=description,
        force=force,
    )
    click.echo(f"Registered '{added.name}': {added.report.rows} rows, copied to {added.path}")
    click.echo(f"dataset_dir: {added.dataset_dir}  (use it with: --set dataset={added.name})")


@data.command(
    name="list",
    help="""List the datasets LLaMA-Factory will see (bundled and your own).
""",
    epilog="""\b
Examples:
  $ lfwrap data list
""",
)
def list_() -> None:
    from wrapper.datasets.add import list_datasets
    from wrapper.datasets.registry import prepare_dataset_dir

    folder = prepare_dataset_dir()
    rows = [("NAME", "SOURCE", "FORMATTING", "RANKING", "ROWS", "FILE")]
    for item in list_datasets():
        rows.append(
            (
                item.name,
                item.source,
                item.formatting,
                "yes" if item.ranking else "no",
                "?" if item.rows is None else str(item.rows),
                item.file,
            )
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))
    click.echo(f"dataset_dir: {folder}")


@data.command(
    help="""Unregister dataset NAME and delete the copy `lfwrap data add` made of its file.

Only a file lfwrap copied in is deleted: a file registered in place, or one added by hand, stays.

Run directories keep their own copies of the data, so earlier runs are untouched. Removing a user
dataset that replaced a bundled one (e.g. a filled `identity`) brings the bundled one back. An entry
added to dataset_info.json by hand or through the web UI is unregistered, its file left in place.
Bundled datasets cannot be removed.
""",
    epilog="""\b
Examples:
  $ lfwrap data remove my_qa
  $ lfwrap data remove my_qa --keep-file
  $ lfwrap data remove identity        # back to the bundled placeholder set
""",
)
@click.argument("name")
@click.option("--keep-file", is_flag=True, help="Leave the data file in the datasets folder.")
def remove(name: str, keep_file: bool) -> None:
    from wrapper.datasets.add import remove_dataset

    removed = remove_dataset(name, keep_file=keep_file)
    click.echo(f"Removed '{removed.name}' from the registry.")
    if removed.deleted:
        click.echo(f"Deleted {removed.deleted}")
    if removed.kept:
        click.echo(f"Kept {removed.kept}")
    if removed.bundled_back:
        click.echo(f"The bundled '{removed.name}' is used again.")


@data.command(
    help="""Fill the identity dataset's {{name}} and {{author}} and register it as `identity`.

The filled rows are written to $LFWRAP_HOME/datasets/identity.json (values are JSON-escaped, so
any name is safe) and replace the bundled placeholder set for every later run.
""",
    epilog="""\b
Examples:
  $ lfwrap data identity --name 神奇海螺 --author 蟹堡王
  $ lfwrap data identity --name Ada --author "Example Labs"
""",
)
@click.option("--name", required=True, help="The assistant's name.")
@click.option("--author", required=True, help="Who built it.")
def identity(name: str, author: str) -> None:
    from wrapper.datasets.identity import write_identity

    path = write_identity(name, author)
    click.echo(f"Wrote {path} and registered it as 'identity'.")
