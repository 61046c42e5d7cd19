"""Exporting a run: merge its LoRA adapter into the base model (`llamafactory-cli export`)."""

from __future__ import annotations

from pathlib import Path

from wrapper.errors import LaunchError, RunError
from wrapper.launch import runs
from wrapper.launch.configfile import read_host_config, write_yaml
from wrapper.launch.local import llamafactory_cli, spawn
from wrapper.launch.process import stop_group
from wrapper.launch.progress import error_lines

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
    trained, _ = docker_setup(runs.read_meta(run_dir))
    options = DockerOptions(hf_cache=default_hf_cache(), user=trained.user)
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
