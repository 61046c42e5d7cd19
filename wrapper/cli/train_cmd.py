"""`lfwrap train`: render → validate → run directory → launch → follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wrapper.cli.options import (
    backend_option,
    dataset_option,
    image_option,
    model_option,
    no_data_check_option,
    set_option,
    template_option,
)
from wrapper.errors import LaunchError, UsageError
from wrapper.launch.distributed import DistributedOptions, distributed_options

if TYPE_CHECKING:
    from wrapper.launch.plan import RunPlan
    from wrapper.launch.train import RunResult

HELP = """Render a template (or take your own LLaMA-Factory YAML), validate it, create a run directory
and launch LLaMA-Factory.

--config FILE takes any LLaMA-Factory training YAML instead of a template (not both): relative paths
in it are taken from the working directory, as llamafactory-cli does, and the run records them as
absolute paths. --set overrides its keys, as `llamafactory-cli train FILE key=value` would. Like a
template run, it writes to the run's own output folder unless --set output_dir=DIR is given.
Every row of the local datasets the config names is checked first (--no-data-check skips that).

The run lives in $LFWRAP_HOME/runs/NAME: config.yaml (the exact file LLaMA-Factory gets),
dataset_info.json and copies of the data, meta.json (status, times, exit code) and train.log.
Progress is read from trainer_log.jsonl; Ctrl-C cancels the whole run.

\b
Examples:
  $ lfwrap train --template sft_lora --model Qwen/Qwen2.5-0.5B-Instruct --name conch
  $ lfwrap train --template sft_lora --model ~/.lfwrap/models/tiny-llama --set template=default \\
      --set bf16=false --set num_train_epochs=150 --set learning_rate=5e-3
  $ lfwrap train --template dpo_lora --dataset dpo_demo --dry-run
  $ lfwrap train --template sft_lora --detach --name conch     # follow: lfwrap runs logs conch -f
  $ lfwrap train --name conch --resume                         # from its last checkpoint
  $ lfwrap train --template sft_lora --backend docker --gpus 0,1 --deepspeed z2
  $ lfwrap train --template sft_lora --backend docker --as-me   # outputs owned by you, not root
  $ lfwrap train --template sft_lora --backend docker --shm-size 16g   # own /dev/shm, no --ipc=host
  $ lfwrap train --config examples/train_lora/llama3_lora_sft.yaml --set num_train_epochs=1
"""


@click.command("train", help=HELP)
@template_option()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Your own LLaMA-Factory training YAML, instead of --template.",
)
@set_option
@model_option("Base model to fine-tune")
@dataset_option
@backend_option
@image_option
@click.option(
    "--as-me",
    is_flag=True,
    help="--backend docker: run the container as your uid:gid, so the files it writes are yours, not root's.",
)
@click.option(
    "--shm-size",
    metavar="SIZE",
    help="--backend docker: give the container its own /dev/shm of SIZE (e.g. 16g) instead of sharing the "
    "host's IPC namespace (--ipc=host, which PyTorch's data loader workers need by default).",
)
@click.option("--name", metavar="RUN", help="Run name (default: template and time).")
@click.option("--dry-run", is_flag=True, help="Show the resolved config and launch command, then stop.")
@click.option("--detach", is_flag=True, help="Start in the background and return at once.")
@click.option("--resume", is_flag=True, help="Continue run --name from its last checkpoint.")
@no_data_check_option
@distributed_options
def train(
    template: str | None,
    config_file: Path | None,
    sets: tuple[str, ...],
    model: str | None,
    dataset: str | None,
    backend: str,
    image: str | None,
    as_me: bool,
    shm_size: str | None,
    name: str | None,
    dry_run: bool,
    detach: bool,
    resume: bool,
    no_data_check: bool,
    distributed: DistributedOptions,
) -> None:
    from wrapper.launch import train as launcher

    if template and config_file:
        raise UsageError("--template and --config exclude each other; give one of them.")
    if resume:
        if not name:
            raise UsageError("--resume needs --name RUN, the run to continue; list runs with `lfwrap runs`.")
        if template or config_file or sets or model or dataset:
            raise UsageError(
                "--resume continues a run with its own config; "
                "drop --template/--config/--set/--model/--dataset."
            )
        from wrapper.launch import runs

        run_dir = runs.find_run(name)
        checkpoint = launcher.prepare_resume(run_dir)
        click.echo(f"Resuming run {name} from {checkpoint.name}.", err=True)
    else:
        plan = _create(
            template,
            config_file,
            sets,
            model,
            dataset,
            backend,
            image,
            as_me,
            name,
            distributed,
            not no_data_check,
            shm_size,
        )
        _warn_placeholders(plan)
        if dry_run:  # the plan is printed, nothing is written
            _show_plan(plan)
            return
        if plan.meta.backend == "local":  # refuse before the run folder exists
            from wrapper.launch.local import check_extras, llamafactory_cli

            check_extras(plan.config, plan.meta.env, llamafactory_cli())
        from wrapper.launch.plan import materialize

        run_dir = materialize(plan)

    try:
        process = launcher.launch(run_dir)
    except LaunchError as exc:
        if not resume:  # nothing ran: leave no queued run behind
            launcher.discard_run(run_dir)
        else:  # back to an ended state, so the next --resume is not refused as queued
            from wrapper.launch import runs

            runs.update_meta(run_dir, status="failed", ended=runs.now(), error=[str(exc)])
        raise
    if detach:
        click.echo(
            f"Run {run_dir.name} started in the background (process group {process.pid}).\n"
            f"  $ lfwrap runs logs {run_dir.name} --follow\n"
            f"  $ lfwrap runs cancel {run_dir.name}"
        )
        return
    follow_in_terminal(run_dir, process)


def _create(
    template: str | None,
    config_file: Path | None,
    sets: tuple[str, ...],
    model: str | None,
    dataset: str | None,
    backend: str,
    image: str | None,
    as_me: bool,
    name: str | None,
    distributed: DistributedOptions,
    data_check: bool,
    shm_size: str | None = None,
) -> RunPlan:
    from wrapper.launch import runs
    from wrapper.launch.plan import plan_run

    if not template and not config_file:
        raise UsageError(
            "--template or --config is required (e.g. --template sft_lora, or --config my_train.yaml); "
            "see `lfwrap templates`."
        )
    overrides = list(sets)
    if config_file:
        from wrapper.userconfig import load_user_config

        if model:
            overrides.append(f"model_name_or_path={model}")
        if dataset:
            overrides.append(f"dataset={dataset}")
        config, problems = load_user_config(config_file, overrides, data_check=data_check)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        if config.get("output_dir") and not any(item.startswith("output_dir=") for item in overrides):
            click.echo(
                "Note: the run writes to its own output folder instead of output_dir "
                f"{config['output_dir']}; --set output_dir=DIR keeps a folder of your choice.",
                err=True,
            )
        run_name: str | None = name or runs.default_run_name(config_file.stem.lstrip("-_.") or "run")
    else:
        assert template is not None
        config = _render(template, sets, model, dataset, overrides, data_check)
        run_name = name
    docker = _docker_options(backend, image, as_me, shm_size, distributed)
    return plan_run(
        config,
        name=run_name,
        template=template,
        overrides=overrides,
        backend=backend,
        distributed=distributed,
        docker=docker,
    )


def _render(
    template: str,
    sets: tuple[str, ...],
    model: str | None,
    dataset: str | None,
    overrides: list[str],
    data_check: bool,
) -> dict:
    from wrapper.errors import ConfigError
    from wrapper.render import render_template
    from wrapper.validate import check_config

    extra: dict[str, str] = {}
    if model:
        extra["model_name_or_path"] = model
        overrides.append(f"model_name_or_path={model}")
        if not any(item.split("=", 1)[0].strip() == "template" for item in sets):
            from wrapper.schema import load_schema

            chat_template = load_schema().default_template(model)
            if chat_template:
                extra["template"] = chat_template
    if dataset:
        extra["dataset"] = dataset
        overrides.append(f"dataset={dataset}")
    rendered = render_template(template, sets, extra=extra)
    for problem in rendered.problems:
        click.echo(f"  {problem}", err=True)
    if data_check:  # the rows of the datasets it names, with their dataset_info entries
        found = check_config(rendered.data, file=f"{template} (rendered)", data_check=True)
        errors = [problem for problem in found if problem.severity == "error"]
        if errors:
            raise ConfigError(f"The datasets of template `{template}` have bad rows; fix them first.", errors)
    return rendered.data


def _docker_options(
    backend: str, image: str | None, as_me: bool, shm_size: str | None, distributed: DistributedOptions
) -> Any:
    docker = None
    if backend == "docker":
        from wrapper.launch.docker_backend import DockerOptions, default_hf_cache, host_user

        docker = DockerOptions(
            gpus=distributed.docker_gpus(),
            hf_cache=default_hf_cache(),
            network=distributed.docker_network(),
            user=host_user() if as_me else None,
            shm_size=shm_size,
        )
        if image:
            docker.image = image
    elif image or as_me or shm_size:
        flag = "--image" if image else "--as-me" if as_me else "--shm-size"
        raise UsageError(f"{flag} only applies to --backend docker.")
    return docker


def _warn_placeholders(plan: RunPlan) -> None:
    sources = [source for source, relative in plan.copies if relative.startswith("data/identity/")]
    if any("{{name}}" in path.read_text(encoding="utf-8") for path in sources):
        click.echo(
            "Warning: the identity dataset still has its {{name}}/{{author}} placeholders; fill them first "
            "with `lfwrap data identity --name NAME --author AUTHOR`.",
            err=True,
        )


def _show_plan(plan: RunPlan) -> None:
    from wrapper.launch import runs
    from wrapper.launch.configfile import config_text
    from wrapper.launch.local import check_extras, llamafactory_cli

    meta = plan.meta
    command: list[str] | None = None
    click.echo(f"# {runs.CONFIG_FILE} for run {meta.name} (dry run: nothing was started or written)")
    click.echo(config_text(plan.config))
    if plan.copies:
        click.echo("# data files copied into the run directory")
        for source, relative in plan.copies:
            click.echo(f"#   {relative} <- {source}")
    if meta.backend == "docker":
        click.echo("# container spec (Engine API POST /containers/create)")
        from wrapper.launch.docker_backend import run_spec

        click.echo(json.dumps(run_spec(plan.run_dir, plan.meta), indent=2, ensure_ascii=False))
        return
    try:
        command = [llamafactory_cli(), *meta.command[1:]]
        check_extras(plan.config, meta.env, command[0])
    except LaunchError as exc:
        command = meta.command if command is None else command
        click.echo(f"# note: {exc}")
    env = " ".join(f"{key}={value}" for key, value in meta.env.items())
    click.echo("# launch command (in the run directory)")
    click.echo(f"{env + ' ' if env else ''}{' '.join(command)}")


def follow_in_terminal(run_dir: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """Follow a run with a progress bar; Ctrl-C cancels it; failure raises LaunchError."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from wrapper.launch import train as launcher
    from wrapper.launch.process import sigterm_as_interrupt

    sigterm_as_interrupt()
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        refresh_per_second=2,
    )
    task = bar.add_task(run_dir.name, total=None, loss="-", eta="-")

    def update(progress: launcher.Progress) -> None:
        loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        if progress.eval_loss is not None:
            loss += f" (eval {progress.eval_loss:.4f})"
        bar.update(
            task,
            completed=progress.step,
            total=progress.total or None,
            loss=loss,
            eta=progress.remaining or "-",
        )

    try:
        with bar:
            outcome = launcher.follow(run_dir, update, process=process)
    except KeyboardInterrupt:
        console.print(f"Cancelling run {run_dir.name} ...")
        launcher.cancel_run(run_dir)
        console.print(f"Run {run_dir.name} cancelled.")
        sys.exit(130)
    _print_outcome(outcome, run_dir)


def _print_outcome(outcome: RunResult, run_dir: Path) -> None:
    from wrapper.evaluate.plan import has_eval_split
    from wrapper.launch import runs

    meta, progress = outcome.meta, outcome.progress
    log = run_dir / runs.LOG_FILE
    if meta.status == "cancelled":
        raise LaunchError(f"Run {meta.name} was cancelled; its log is {log}.")
    if meta.status == "failed":
        for line in meta.error:
            click.echo(f"  {line}", err=True)
        raise LaunchError(f"Run {meta.name} failed (exit code {meta.exit_code}); the full log is {log}.")
    loss = f"{progress.loss:.4f}" if progress.loss is not None else "n/a"
    if progress.eval_loss is not None:
        loss += f", eval loss {progress.eval_loss:.4f}"
    click.echo(f"Run {meta.name} succeeded: {progress.step}/{progress.total} steps, final loss {loss}.")
    if outcome.adapter:
        click.echo(f"  adapter:   {outcome.adapter}")
    if outcome.loss_plot:
        click.echo(f"  loss plot: {outcome.loss_plot}")
    click.echo(f"Next:\n  $ lfwrap eval {meta.name}{'' if has_eval_split(run_dir) else ' --dataset NAME'}")
    click.echo(f"  $ lfwrap serve {meta.name}\n  $ lfwrap export {meta.name}")
