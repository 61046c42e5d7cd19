"""A run, planned: everything a run directory will hold, computed without writing anything.

    plan = plan_run(config, name="conch", template="sft_lora")   # pure: reads, never writes
    print(plan.config, plan.meta.command, plan.copies)            # what `train --dry-run` shows
    run_dir = materialize(plan)                                   # the one step that writes

A dry run, a refused mount or an interrupted `--dry-run | head -1` therefore leaves no trace: the
run folder exists only once `materialize` made it, and it is made with mkdir (never reused), so a
second `train --name X` racing the first is refused instead of deleting the first's folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrapper.errors import LaunchError, RunError
from wrapper.launch import runs
from wrapper.launch.configfile import config_text

if TYPE_CHECKING:
    from wrapper.launch.distributed import DistributedOptions
    from wrapper.launch.docker_backend import DockerOptions

DATASET_KEYS = ("dataset", "eval_dataset")
INLINE_DEEPSPEED_FILE = "ds_config.json"


@dataclass
class RunPlan:
    run_dir: Path  # where the run will live (not created yet)
    config: dict[str, Any]  # config.yaml, exactly as LLaMA-Factory will get it
    meta: runs.RunMeta
    dataset_info: dict[str, dict[str, Any]] | None = None  # the run's dataset_info.json
    copies: list[tuple[Path, str]] = field(default_factory=list)  # (data file, path inside run_dir)
    files: dict[str, str] = field(default_factory=dict)  # other files inside run_dir (DeepSpeed JSON)


def _inside(run_dir: Path, relative: str) -> Path:
    """run_dir/relative, refused unless it stays inside run_dir (no '..', no absolute part)."""
    path = Path(os.path.normpath(run_dir / relative))
    if not path.is_relative_to(run_dir) or path == run_dir:
        raise LaunchError(f"Refusing to write {relative!r}: it would land outside the run folder {run_dir}.")
    return path


def plan_datasets(
    config: dict[str, Any], run_dir: Path
) -> tuple[dict[str, Any], dict[str, dict[str, Any]] | None, list[tuple[Path, str]]]:
    """The config pointing at the run's own dataset_info.json, that file's entries (just the datasets
    the config uses, their file_name under data/NAME/) and the data files to copy there."""
    from wrapper import home
    from wrapper.datasets.registry import INFO_FILE, dataset_files, dataset_info_for
    from wrapper.errors import DatasetError
    from wrapper.validate import split_names

    names = [name for key in DATASET_KEYS for name in split_names(config.get(key))]
    if not names:
        return config, None, []
    raw_dir = config.get("dataset_dir")
    if str(raw_dir or "") == "ONLINE" or str(raw_dir or "").startswith("REMOTE:"):
        return config, None, []  # hub datasets: LLaMA-Factory fetches them, nothing to copy
    source_dir = Path(str(raw_dir)).expanduser() if raw_dir else home.user_datasets_dir()
    info = dataset_info_for(source_dir)  # every entry name validated (no '/', '..')
    if info is None:
        raise DatasetError(
            f"There is no dataset_info.json in {source_dir}; point dataset_dir at the folder holding it."
        )
    entries: dict[str, dict[str, Any]] = {}
    copies: list[tuple[Path, str]] = []
    for name in dict.fromkeys(names):
        files = dataset_files(source_dir, [name])  # DatasetError for an unknown name
        entry = dict(info[name])
        file_name = entry.get("file_name")
        if file_name:
            folder = f"data/{name}"
            if _inside(run_dir, folder).parent != run_dir / "data":
                raise LaunchError(f"Dataset name {name!r} is not a plain name; rename it in {INFO_FILE}.")
            for path in files:
                if not path.is_file():
                    raise LaunchError(
                        f"Dataset '{name}' points at {path}, which does not exist; fix its file_name in "
                        f"{source_dir / 'dataset_info.json'} or register the file with `lfwrap data add`."
                    )
                _inside(run_dir, f"{folder}/{path.name}")
                copies.append((path, f"{folder}/{path.name}"))
            single = len(files) == 1 and not (source_dir / str(file_name)).is_dir()
            entry["file_name"] = f"{folder}/{files[0].name}" if single else folder
        entries[name] = entry
    return {**config, "dataset_dir": str(run_dir)}, entries, copies


def plan_run(
    config: dict[str, Any],
    *,
    name: str | None = None,
    template: str | None = None,
    overrides: Sequence[str] = (),
    backend: str = "local",
    distributed: DistributedOptions | None = None,
    docker: DockerOptions | None = None,
) -> RunPlan:
    """Plan a run of `config` (a rendered LLaMA-Factory config); writes nothing.

    output_dir becomes run_dir/output unless the overrides set it; the datasets are planned as copies;
    the distributed options and, for backend "docker", the DockerOptions decide the environment, the
    command and the paths the config uses (the mount checks run here, so a refusal leaves no trace).
    """
    from wrapper.launch.local import llamafactory_version
    from wrapper.launch.preflight import check_output

    run_name = runs.check_run_name(name) if name else runs.default_run_name(template or "run")
    run_dir = runs.run_path(run_name)
    if run_dir.exists():
        raise RunError(
            f"Run {run_name!r} already exists at {run_dir}; pick another --name, or continue it with "
            f"`lfwrap train --name {run_name} --resume`."
        )
    overrides = list(overrides)
    config, dataset_info, copies = plan_datasets(dict(config), run_dir)
    if not any(item.startswith("output_dir=") for item in overrides):
        config["output_dir"] = str(run_dir / runs.OUTPUT_DIR)
    host_output = config.get("output_dir", str(run_dir / runs.OUTPUT_DIR))
    # an unwritable output folder or too little disk for the checkpoints: say so now, not an hour in
    check_output(config, host_output, run_name)
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    if distributed is not None:
        from wrapper.launch.distributed import apply

        config, env = apply(distributed, config, env, run_dir, backend=backend, files=files)
    if isinstance(config.get("deepspeed"), dict):  # a template's preset, rendered inline
        files[INLINE_DEEPSPEED_FILE] = json.dumps(config["deepspeed"], indent=2) + "\n"
        config["deepspeed"] = str(run_dir / INLINE_DEEPSPEED_FILE)
    docker_meta = None
    if backend == "docker":
        config, docker_meta = _docker_paths(config, run_dir, docker)
    meta = runs.RunMeta(
        name=run_dir.name,
        template=template,
        overrides=overrides,
        backend="docker" if backend == "docker" else "local",
        command=["llamafactory-cli", "train", runs.CONFIG_FILE],
        env=env,
        image=docker_meta["options"]["image"] if docker_meta else None,
        llamafactory_version=None if backend == "docker" else llamafactory_version(),
        output_dir=str(host_output),
        created=runs.now(),
        docker=docker_meta,
    )
    for relative in files:
        _inside(run_dir, relative)
    plan = RunPlan(run_dir, config, meta, dataset_info, copies, files)
    if backend == "docker":
        from wrapper.launch.docker_backend import run_spec

        run_spec(plan.run_dir, plan.meta)  # the Docker backend's mount checks, before anything is written
    return plan


def _docker_paths(
    config: dict[str, Any], run_dir: Path, options: DockerOptions | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    from wrapper.launch.docker_backend import DockerOptions
    from wrapper.launch.docker_paths import in_container, recorded

    options = options or DockerOptions()
    config, mounts = in_container(config, run_dir, options)
    return config, recorded(options, mounts)


def materialize(plan: RunPlan) -> Path:
    """Create the planned run directory, status queued: copies, dataset_info.json, files, config, meta.

    The folder is claimed with mkdir: an existing one (another `train --name X`) is refused, untouched.
    """
    run_dir = plan.run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise RunError(
            f"Run {run_dir.name!r} already exists at {run_dir}; pick another --name, or continue it with "
            f"`lfwrap train --name {run_dir.name} --resume`."
        ) from None
    try:
        for source, relative in plan.copies:
            target = _inside(run_dir, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        if plan.dataset_info is not None:
            text = json.dumps(plan.dataset_info, indent=2, ensure_ascii=False) + "\n"
            (run_dir / "dataset_info.json").write_text(text, encoding="utf-8")
        for relative, text in plan.files.items():
            _inside(run_dir, relative).write_text(text, encoding="utf-8")
        (run_dir / runs.CONFIG_FILE).write_text(config_text(plan.config), encoding="utf-8")
        runs.write_meta(run_dir, plan.meta)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # ours: made by the mkdir above
        raise
    return run_dir
