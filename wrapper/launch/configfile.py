"""LLaMA-Factory config files: written as YAML in their rendered key order, read back, and a docker
run's config seen from the host (its container paths mapped back to the folders mounted there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wrapper.launch import runs
from wrapper.yamlload import safe_load


def config_text(config: dict[str, Any]) -> str:
    """A LLaMA-Factory config as YAML (keys in their rendered order, Unicode kept)."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write a LLaMA-Factory config file; its path."""
    path.write_text(config_text(data), encoding="utf-8")
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
    from wrapper.launch.docker_paths import CONTAINER_RUN_DIR, Mount, docker_setup, host_config

    _, mounts = docker_setup(meta)
    return host_config(config, [*mounts, Mount(run_dir, CONTAINER_RUN_DIR, read_only=False)])
