"""The training launcher as a library: rendered config → run directory → launch → follow → result.

    run_dir = create_run(config, template="sft_lora", overrides=[...])   # writes the run directory
    launch(run_dir)                                  # starts the supervisor (own process group)
    meta = follow(run_dir, on_progress=print)        # until succeeded / failed / cancelled
    cancel_run(run_dir)                              # from anywhere, also for detached runs

The CLI (`lfwrap train`, `lfwrap runs`), a job worker or the gateway call these and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from wrapper.errors import LaunchError, RunError
from wrapper.launch import runs
from wrapper.launch.local import check_extras, llamafactory_cli, llamafactory_version
from wrapper.launch.progress import Progress, TrainerLog
from wrapper.yamlload import safe_load

POLL_SECONDS = 0.1
CANCEL_GRACE_SECONDS = 15.0
DATASET_KEYS = ("dataset", "eval_dataset")


@dataclass
class RunResult:
    meta: runs.RunMeta
    progress: Progress
    adapter: Path | None  # output_dir when it holds an adapter or model
    loss_plot: Path | None


def copy_datasets(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Copy the data files of the config's datasets into run_dir/data and write run_dir/dataset_info.json
    listing just those datasets; returns the config with dataset_dir pointing at the run directory."""
    from wrapper.datasets.info import read_dataset_info
    from wrapper.datasets.registry import dataset_files, prepare_dataset_dir
    from wrapper.validate import split_names

    names = [name for key in DATASET_KEYS for name in split_names(config.get(key))]
    remote = str(config.get("dataset_dir") or "")
    if not names or remote == "ONLINE" or remote.startswith("REMOTE:"):  # hub datasets: nothing to copy
        return config
    source_dir = Path(str(config.get("dataset_dir") or prepare_dataset_dir())).expanduser()
    info = read_dataset_info(source_dir / "dataset_info.json")
    copied: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        files = dataset_files(source_dir, [name])  # DatasetError for an unknown name
        entry = dict(info[name])
        file_name = entry.get("file_name")
        if file_name:
            target = run_dir / "data" / name
            target.mkdir(parents=True, exist_ok=True)
            for path in files:
                if not path.is_file():
                    raise LaunchError(
                        f"Dataset '{name}' points at {path}, which does not exist; fix its file_name in "
                        f"{source_dir / 'dataset_info.json'} or register the file with `lfwrap data add`."
                    )
                shutil.copy2(path, target / path.name)
            single = len(files) == 1 and not (source_dir / str(file_name)).is_dir()
            entry["file_name"] = f"data/{name}/{files[0].name}" if single else f"data/{name}"
        copied[name] = entry
    (run_dir / "dataset_info.json").write_text(json.dumps(copied, indent=2, ensure_ascii=False) + "\n")
    return {**config, "dataset_dir": str(run_dir)}


def create_run(
    config: dict[str, Any],
    *,
    name: str | None = None,
    template: str | None = None,
    overrides: Sequence[str] = (),
    backend: str = "local",
    distributed: Any = None,
    docker: Any = None,
) -> Path:
    """Write a run directory for `config` (a rendered LLaMA-Factory config) and return it, status queued.

    output_dir becomes run_dir/output unless the overrides set it; the datasets are copied in; the
    distributed options (wrapper.launch.distributed.DistributedOptions) and, for backend "docker", the
    DockerOptions decide the environment, the command and the paths the config uses.
    """
    run_name = runs.check_run_name(name) if name else runs.default_run_name(template or "run")
    run_dir = runs.run_path(run_name)
    if run_dir.exists():
        raise RunError(
            f"Run {run_name!r} already exists at {run_dir}; pick another --name, or continue it with "
            f"`lfwrap train --name {run_name} --resume`."
        )
    run_dir.mkdir(parents=True)
    try:
        return _fill_run(run_dir, config, template, list(overrides), backend, distributed, docker)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _fill_run(
    run_dir: Path,
    config: dict[str, Any],
    template: str | None,
    overrides: list[str],
    backend: str,
    distributed: Any,
    docker: Any,
) -> Path:
    config = copy_datasets(dict(config), run_dir)
    if not any(item.startswith("output_dir=") for item in overrides):
        config["output_dir"] = str(run_dir / runs.OUTPUT_DIR)
    host_output = config.get("output_dir", str(run_dir / runs.OUTPUT_DIR))
    env: dict[str, str] = {}
    if distributed is not None:
        from wrapper.launch.distributed import apply

        config, env = apply(distributed, config, env, run_dir, backend=backend)
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
    write_config(run_dir, config)
    runs.write_meta(run_dir, meta)
    return run_dir


def _docker_paths(
    config: dict[str, Any], run_dir: Path, options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    from wrapper.launch.docker_backend import DockerOptions, Mount, container_config, effective_mounts

    options = options or DockerOptions()
    mounts: list[Mount] = model_mounts(config, run_dir)
    config = container_config(config, effective_mounts(run_dir=run_dir, options=options, mounts=mounts))
    fields = asdict(options)
    if fields.get("hf_cache") is not None:
        fields["hf_cache"] = str(fields["hf_cache"])
    return config, {"options": fields, "mounts": [[str(m.source), m.target, m.read_only] for m in mounts]}


def model_mounts(config: dict[str, Any], folder: Path) -> list[Any]:
    """Read-only container mounts (/app/models/NAME, /app/adapters/NAME, /app/media/NAME) for the config's
    local model, adapter and media folders that lie outside `folder` (the container's /app/run)."""
    from wrapper.launch.docker_backend import Mount

    mounts = []
    for key, parent in (
        ("model_name_or_path", "/app/models"),
        ("adapter_name_or_path", "/app/adapters"),
        ("media_dir", "/app/media"),  # images/videos/audios a config's datasets name
    ):
        value = str(config.get(key) or "")
        if value.startswith("/") and not Path(value).resolve().is_relative_to(folder.resolve()):
            mounts.append(Mount(Path(value), f"{parent}/{Path(value).name}", read_only=True))
    return mounts


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write a LLaMA-Factory config file (keys in their rendered order, Unicode kept)."""
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_config(run_dir: Path, config: dict[str, Any]) -> Path:
    return write_yaml(run_dir / runs.CONFIG_FILE, config)


def read_config(run_dir: Path) -> dict[str, Any]:
    data = safe_load((run_dir / runs.CONFIG_FILE).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def read_host_config(run_dir: Path) -> dict[str, Any]:
    """The run's config as seen from this machine: a docker run's container paths (/app/run,
    /app/models/NAME ...) mapped back to the host folders they were mounted from."""
    config = read_config(run_dir)
    meta = runs.read_meta(run_dir)
    if meta.backend != "docker":
        return config
    from wrapper.launch.docker_backend import CONTAINER_RUN_DIR, Mount, host_config

    _, mounts = docker_setup(meta)
    return host_config(config, [*mounts, Mount(run_dir, CONTAINER_RUN_DIR, read_only=False)])


def launch_command(run_dir: Path) -> list[str]:
    """What the supervisor runs, for --dry-run (locally: the resolved llamafactory-cli)."""
    meta = runs.read_meta(run_dir)
    if meta.backend == "docker":
        return meta.command
    return [llamafactory_cli(), *meta.command[1:]]


def docker_setup(meta: runs.RunMeta) -> tuple[Any, list[Any]]:
    """The DockerOptions and extra mounts recorded in a docker run's meta."""
    from wrapper.launch.docker_backend import DockerOptions, Mount

    spec = meta.docker or {}
    options = DockerOptions(**spec.get("options", {}))
    if options.hf_cache is not None:
        options.hf_cache = Path(options.hf_cache)
    return options, [Mount(Path(m[0]), m[1], bool(m[2])) for m in spec.get("mounts", [])]


def container_spec_for(run_dir: Path) -> dict[str, Any]:
    """The container spec a docker run will be created with (secrets redacted), for --dry-run."""
    from wrapper.launch.docker_backend import container_spec, redact_spec

    meta = runs.read_meta(run_dir)
    options, mounts = docker_setup(meta)
    spec = container_spec(run_dir=run_dir, command=meta.command, options=options, env=meta.env, mounts=mounts)
    return redact_spec(spec)


def prepare_resume(run_dir: Path) -> Path:
    """Point the run's config at its last checkpoint and queue it again."""
    meta = runs.read_meta(run_dir)
    if meta.status in ("queued", "running"):
        raise RunError(f"Run {meta.name!r} is {meta.status}; wait, or `lfwrap runs cancel {meta.name}`.")
    checkpoint = runs.last_checkpoint(Path(meta.output_dir))
    if checkpoint is None:
        raise RunError(
            f"Run {meta.name!r} has no checkpoint-N folder in {meta.output_dir} to resume from; "
            "save checkpoints with --set save_steps=N, or start a new run."
        )
    config = read_config(run_dir)
    if meta.backend == "docker":
        config["resume_from_checkpoint"] = f"{config['output_dir'].rstrip('/')}/{checkpoint.name}"
    else:
        config["resume_from_checkpoint"] = str(checkpoint)
    write_config(run_dir, config)
    runs.write_meta(
        run_dir,
        meta.updated(status="queued", exit_code=None, ended=None, error=[], pid=None, pgid=None),
    )
    return checkpoint


def launch(run_dir: Path) -> subprocess.Popen[bytes]:
    """Start the supervisor for a queued run in a new session; it records the run's status."""
    meta = runs.read_meta(run_dir)
    if meta.backend == "local":  # fail here, in the caller, when a needed package is missing
        check_extras(read_config(run_dir), meta.env, llamafactory_cli())
    with (run_dir / "supervisor.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wrapper.launch.supervisor", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    runs.update_meta(run_dir, pid=process.pid, pgid=process.pid)
    return process


def refresh(run_dir: Path, check_group: bool = True) -> runs.RunMeta:
    """The run's meta, marking it failed when its supervisor vanished without recording an end
    (`check_group`: look for its process group, a scan of /proc)."""
    meta = runs.read_meta(run_dir)
    if check_group and meta.status == "running" and meta.pgid and not runs.group_alive(meta.pgid):
        time.sleep(POLL_SECONDS)
        meta = runs.read_meta(run_dir)
        if meta.status == "running":
            meta = runs.update_meta(
                run_dir,
                status="failed",
                ended=runs.now(),
                error=["The run's supervisor ended without recording a result."],
            )
    return meta


def follow(
    run_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> RunResult:
    """Wait for the run to finish, calling `on_progress` as trainer_log.jsonl grows; the result."""
    reader = TrainerLog(Path(runs.read_meta(run_dir).output_dir) / runs.TRAINER_LOG)
    last: tuple[int, int] | None = None
    polls = 0
    while True:
        if process is not None:
            process.poll()
        # The supervisor records the end itself; looking for a vanished one costs a /proc scan, so
        # only when it has exited (our child) or, for someone else's run, every few seconds.
        polls += 1
        gone = process.returncode is not None if process is not None else polls % 25 == 0
        meta = refresh(run_dir, check_group=gone)
        progress = reader.poll()
        if on_progress is not None and (progress.step, progress.total) != last:
            last = (progress.step, progress.total)
            on_progress(progress)
        if meta.status in runs.FINISHED:
            break
        if meta.status == "queued" and process is not None and process.returncode is not None:
            raise LaunchError(f"The run's supervisor exited at once; see {run_dir / 'supervisor.log'}.")
        if process is not None and process.returncode is None:
            try:  # wakes as soon as the supervisor exits, right after it recorded the end
                process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(POLL_SECONDS)
    if process is not None:
        process.wait()
    return result(run_dir)


def result(run_dir: Path) -> RunResult:
    meta = runs.read_meta(run_dir)
    out = Path(meta.output_dir)
    progress = TrainerLog(out / runs.TRAINER_LOG).poll()
    has_weights = any((out / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))
    plot = out / "training_loss.png"
    return RunResult(meta, progress, out if has_weights else None, plot if plot.is_file() else None)


def cancel_run(run_dir: Path, grace: float = CANCEL_GRACE_SECONDS) -> runs.RunMeta:
    """Stop a queued or running run: SIGTERM its process group, SIGKILL after `grace`; status cancelled."""
    meta = runs.read_meta(run_dir)
    if meta.status in runs.FINISHED:
        raise RunError(f"Run {meta.name!r} already ended ({meta.status}); nothing to cancel.")
    if meta.pgid:
        _signal_group(meta.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while runs.group_alive(meta.pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if runs.group_alive(meta.pgid):
            _signal_group(meta.pgid, signal.SIGKILL)
            while runs.group_alive(meta.pgid):
                time.sleep(0.1)
    meta = runs.read_meta(run_dir)
    if meta.status not in runs.FINISHED:
        meta = runs.update_meta(run_dir, status="cancelled", ended=runs.now())
    return meta


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def discard_run(run_dir: Path) -> None:
    """Remove a run directory that was only planned (--dry-run) or could not start."""
    shutil.rmtree(run_dir, ignore_errors=True)


def folder_size(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_run(run_dir: Path) -> Path | None:
    """Delete a finished run's folder; returns an output_dir outside it that was left in place.

    A queued or running run is refused (cancel it first). Files a container wrote as root cannot be
    deleted by another user: the error says so instead of leaving a half-deleted run unexplained.
    """
    meta = refresh(run_dir)
    if meta.status not in runs.FINISHED:
        raise RunError(
            f"Run {meta.name!r} is {meta.status}; cancel it first with `lfwrap runs cancel {meta.name}`."
        )
    output = Path(meta.output_dir)
    outside = None if output.resolve().is_relative_to(run_dir.resolve()) else output

    failed: list[str] = []
    shutil.rmtree(run_dir, onerror=lambda _func, path, _exc: failed.append(path))
    if failed:
        raise RunError(
            f"Could not delete {len(failed)} path(s) of run {meta.name!r}, e.g. {failed[0]} (written as root "
            f"by a container?); remove {run_dir} with sudo, and use --as-me for docker runs."
        )
    return outside
