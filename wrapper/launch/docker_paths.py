"""Docker path mapping: which host folders a container sees, and where.

A LLaMA-Factory config names host paths (a local model, adapters, the run folder, DeepSpeed JSON); in a
container the same files sit under the mounts' targets (/app/run, /app/models/NAME ...).
`container_config` rewrites a config's paths for the container, `host_config` maps them back, and
`in_container` does both halves of a launch's mapping: the mounts a config needs and the config as the
container reads it. A docker run records its options and mounts in meta.json (`recorded`), read back
with `docker_setup`. Nothing here talks to an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wrapper.errors import LaunchError

if TYPE_CHECKING:
    from wrapper.launch.docker_backend import DockerOptions
    from wrapper.launch.runs import RunMeta

CONTAINER_RUN_DIR = "/app/run"
CONTAINER_DATA_DIR = "/app/data"
CONTAINER_MODELS_DIR = "/app/models"
CONTAINER_HF_HOME = "/root/.cache/huggingface"
# Where the cache goes for a non-root --user: /root is closed to other users in the image.
CONTAINER_HF_HOME_USER = "/app/hf_home"


@dataclass(frozen=True)
class Mount:
    """A host folder or file the container sees at `target`."""

    source: Path
    target: str
    read_only: bool = True


def container_path(host_path: Path | str, mounts: Iterable[Mount]) -> str:
    """Where `host_path` appears inside the container, given the mounts; LaunchError if nowhere."""
    resolved = Path(host_path).expanduser().resolve()
    for mount in mounts:
        source = mount.source.expanduser().resolve()
        if resolved == source:
            return mount.target
        if resolved.is_relative_to(source):
            return f"{mount.target.rstrip('/')}/{resolved.relative_to(source).as_posix()}"
    raise LaunchError(
        f"{host_path} is not visible inside the container; put it under $LFWRAP_HOME "
        f"(runs, datasets or models) or use a Hugging Face model name."
    )


def host_path(inside: str, mounts: Iterable[Mount]) -> str:
    """The host path behind a container path, given the mounts; unchanged when no mount holds it."""
    for mount in mounts:
        target = mount.target.rstrip("/")
        if inside == target or inside.startswith(target + "/"):
            return str(mount.source.expanduser().resolve() / inside[len(target) :].lstrip("/"))
    return inside


def hf_home_target(options: DockerOptions) -> str:
    return CONTAINER_HF_HOME_USER if options.user else CONTAINER_HF_HOME


def effective_mounts(*, run_dir: Path | None, options: DockerOptions, mounts: list[Mount]) -> list[Mount]:
    """`mounts` plus the run directory (read-write, /app/run) when there is one and the Hugging Face cache
    when set."""
    result = [
        Mount(m.source.expanduser(), m.target, m.read_only) for m in mounts if m.target != CONTAINER_RUN_DIR
    ]
    if run_dir is not None:
        result.append(Mount(run_dir, CONTAINER_RUN_DIR, read_only=False))
    if options.hf_cache is not None:
        result.append(Mount(options.hf_cache.expanduser(), hf_home_target(options), read_only=False))
    return result


def standard_mounts(dataset_dir: Path, model_dir: Path | None = None) -> list[Mount]:
    """The usual read-only mounts: the datasets folder at /app/data and a local model at /app/models."""
    mounts = [Mount(dataset_dir, CONTAINER_DATA_DIR, read_only=True)]
    if model_dir is not None:
        mounts.append(Mount(model_dir, f"{CONTAINER_MODELS_DIR}/{model_dir.name}", read_only=True))
    return mounts


CONFIG_PATH_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "output_dir",
    "dataset_dir",
    "deepspeed",
    "export_dir",
    "resume_from_checkpoint",
    "logging_dir",
    "tokenized_path",
    "media_dir",
)


def host_config(config: Mapping[str, Any], mounts: Iterable[Mount]) -> dict[str, Any]:
    """The inverse of container_config: a container-side config with its paths back on the host."""
    mount_list = list(mounts)
    result = dict(config)
    for key in CONFIG_PATH_KEYS:
        value = result.get(key)
        if isinstance(value, str) and value.startswith("/"):
            parts = value.split(",") if key == "adapter_name_or_path" else [value]
            result[key] = ",".join(host_path(part.strip(), mount_list) for part in parts)
    return result


def container_config(config: Mapping[str, Any], mounts: Iterable[Mount]) -> dict[str, Any]:
    """A copy of a LLaMA-Factory config whose absolute host paths point inside the container."""
    mount_list = list(mounts)
    result = dict(config)
    for key in CONFIG_PATH_KEYS:
        value = result.get(key)
        if not isinstance(value, str):
            continue
        parts = [part.strip() for part in value.split(",")] if key == "adapter_name_or_path" else [value]
        if not all(part.startswith("/") for part in parts):
            continue
        result[key] = ",".join(container_path(part, mount_list) for part in parts)
    return result


def model_mounts(config: Mapping[str, Any], folder: Path) -> list[Mount]:
    """Read-only container mounts (/app/models/NAME, /app/adapters/NAME, /app/media/NAME) for the config's
    local model, adapter and media folders that lie outside `folder` (the container's /app/run)."""
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


def in_container(
    config: Mapping[str, Any], folder: Path, options: DockerOptions, extra: Sequence[Mount] = ()
) -> tuple[dict[str, Any], list[Mount]]:
    """The config as a container with `folder` at /app/run reads it, and the mounts it needs besides that
    folder and the cache: the config's own model and adapter folders (read-only), then `extra`."""
    mounts = [*model_mounts(config, folder), *extra]
    inside = container_config(config, effective_mounts(run_dir=folder, options=options, mounts=mounts))
    return inside, mounts


def recorded(options: DockerOptions, mounts: Sequence[Mount]) -> dict[str, Any]:
    """What meta.json keeps of a docker run's options and extra mounts (read back by docker_setup)."""
    fields = asdict(options)
    if fields.get("hf_cache") is not None:
        fields["hf_cache"] = str(fields["hf_cache"])
    return {"options": fields, "mounts": [[str(m.source), m.target, m.read_only] for m in mounts]}


def docker_setup(meta: RunMeta) -> tuple[DockerOptions, list[Mount]]:
    """The DockerOptions and extra mounts recorded in a docker run's meta."""
    from wrapper.launch.docker_backend import DockerOptions

    spec = meta.docker or {}
    options = DockerOptions(**spec.get("options", {}))
    if options.hf_cache is not None:
        options.hf_cache = Path(options.hf_cache)
    return options, [Mount(Path(m[0]), m[1], bool(m[2])) for m in spec.get("mounts", [])]
