"""Exporting a run: merge its LoRA adapter into the base model (`llamafactory-cli export`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wrapper.errors import LaunchError, RunError
from wrapper.launch import runs
from wrapper.launch.configfile import read_host_config, write_yaml
from wrapper.launch.local import llamafactory_cli, spawn
from wrapper.launch.process import stop_group
from wrapper.launch.progress import error_lines

if TYPE_CHECKING:
    from wrapper.launch.runs import BoardRun

EXPORT_FILE = "export.yaml"


def export_config(run_dir: Path, out: Path, sets: tuple[str, ...] = ()) -> dict:
    """The rendered merge_lora config for a finished run, writing the merged model to `out`."""
    from wrapper.render import render_template

    meta = runs.require_succeeded(run_dir, "export")
    config = read_host_config(run_dir)
    extra = {
        "model_name_or_path": config["model_name_or_path"],
        "adapter_name_or_path": meta.output_dir,
        "export_dir": str(out),
    }
    if config.get("template"):
        extra["template"] = config["template"]
    return render_template("merge_lora", sets, extra=extra).data


def board_export_config(source: BoardRun, out: Path, sets: tuple[str, ...] = ()) -> dict:
    """The merge_lora config for a finished LLaMA Board LoRA run, writing the merged model to `out`."""
    from wrapper.launch import board
    from wrapper.render import render_template

    board.require_trained(source, "exported")
    config = board.board_config(source)
    if config.get("finetuning_type", "lora") not in ("lora", "oft"):
        raise RunError(
            f"LLaMA Board run {source.name!r} trained the whole model ({config['finetuning_type']}); its "
            f"folder {source.folder} is already a standalone model: `lfwrap serve --model {source.folder}`."
        )
    extra = {
        "model_name_or_path": config["model_name_or_path"],
        "adapter_name_or_path": ",".join(board.tuned_adapters(config, str(source.folder))),
        "export_dir": str(out),
    }
    if config.get("template"):
        extra["template"] = config["template"]
    return render_template("merge_lora", sets, extra=extra).data


def export_run(
    name: str,
    out: Path | None = None,
    *,
    sets: tuple[str, ...] = (),
    backend: str = "local",
    force: bool = False,
) -> Path:
    """Merge run `name`'s adapter into a standalone model folder (default run_dir/merged); its path.

    An `out` folder that is not empty is refused unless `force`: the merge writes config.json,
    tokenizer and weight files there and would mix them with (or replace) what it holds.
    """
    from wrapper.launch import board

    if board.is_board_name(name):  # a LLaMA Board run: read-only, lfwrap's files go to its side folder
        source = board.find_board_run(name)
        run_dir = board.side_dir(source)
        target = (out or run_dir / "merged").expanduser().resolve()
        if out is not None and not force:
            check_out_folder(target)
        config = board_export_config(source, target, sets)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = runs.find_run(name)
        target = (out or run_dir / "merged").expanduser().resolve()
        if out is not None and not force:
            check_out_folder(target)
        config = export_config(run_dir, target, sets)
    path = run_dir / EXPORT_FILE
    log_path = run_dir / "export.log"
    if backend == "docker":
        code = _export_docker(run_dir, config, path, log_path, target)
    else:
        write_yaml(path, config)
        process = spawn([llamafactory_cli(), "export", EXPORT_FILE], cwd=run_dir, log_path=log_path, env={})
        try:
            code = process.wait()
        except BaseException:
            stop_group(process)
            raise
    if code != 0:
        lines = error_lines(log_path.read_text(encoding="utf-8", errors="replace"))
        raise LaunchError(
            f"Exporting run {name} failed (exit code {code}): {' / '.join(lines)}; full log: {log_path}."
        )
    return target


def check_out_folder(target: Path) -> None:
    """RunError unless `target` is missing or an empty folder."""
    if target.exists() and not target.is_dir():
        raise RunError(f"--out {target} is a file; give a folder (new or empty).")
    if target.is_dir() and any(target.iterdir()):
        raise RunError(
            f"--out {target} is not empty; choose a new or empty folder, or pass --force to write into it."
        )


def _export_docker(run_dir: Path, config: dict, path: Path, log_path: Path, target: Path) -> int:
    from wrapper.launch.docker_backend import DockerOptions, default_hf_cache, start_container
    from wrapper.launch.docker_paths import Mount, docker_setup, in_container

    # A run trained with --as-me is exported as the same user, so its merged model is the user's too.
    meta = runs.read_meta(run_dir) if (run_dir / runs.META_FILE).is_file() else None  # none: a board run
    user = docker_setup(meta)[0].user if meta is not None else None
    options = DockerOptions(hf_cache=default_hf_cache(), user=user)
    extra = []
    if not target.is_relative_to(run_dir):
        target.mkdir(parents=True, exist_ok=True)
        extra.append(Mount(target, "/app/export", read_only=False))
    inside, mounts = in_container(config, run_dir, options, extra)
    write_yaml(path, inside)
    handle = start_container(
        run_dir=run_dir,
        command=["llamafactory-cli", "export", EXPORT_FILE],
        options=options,
        env={},
        mounts=mounts,
    )
    with log_path.open("ab") as log:

        def sink(chunk: bytes) -> None:
            log.write(chunk)

        return handle.run(sink)
