"""Scale a run beyond one device with LLaMA-Factory's own engines: torchrun, DeepSpeed, Ray.

LLaMA-Factory reads its launch settings from the environment (FORCE_TORCHRUN, NNODES, NODE_RANK,
NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, USE_RAY) and from the config (`deepspeed:` path,
`ray_num_workers`, `ray_init_kwargs`). `apply` turns the command-line choices into exactly those,
after checking that they make sense together; `distributed_options` adds the flags to a command.

    torchrun  --nproc-per-node 2 [--nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500]
    DeepSpeed --deepspeed z2|z3|z3_offload   (needs torchrun, so FORCE_TORCHRUN=1 is set; not with Ray)
    Ray       --ray-address auto --ray-num-workers 4   (USE_RAY=1; Ray places the workers itself)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from wrapper.errors import UsageError

DeepSpeedPreset = Literal["z2", "z3", "z3_offload"]
DEEPSPEED_PRESETS: tuple[str, ...] = ("z2", "z3", "z3_offload")

Gpus = Literal["all"] | list[str]


def parse_gpus(text: str) -> Gpus:
    """ "all", "none" (CPU only: an empty list) or comma-separated device ids such as "0,1"."""
    value = text.strip().lower()
    if value == "all":
        return "all"
    if value in ("none", "cpu", ""):
        return []
    ids = [part.strip() for part in value.split(",")]
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {text!r} is not valid; use all, none, or distinct device ids such as 0,1.")
    return ids


@dataclass(frozen=True)
class DistributedOptions:
    """How to spread a run over devices and machines; the defaults change nothing."""

    gpus: Gpus | None = None  # None: not chosen (LLaMA-Factory uses what it finds)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    nproc_per_node: int | None = None
    deepspeed: DeepSpeedPreset | None = None
    ray_address: str | None = None
    ray_num_workers: int | None = None

    @property
    def use_ray(self) -> bool:
        return self.ray_address is not None or self.ray_num_workers is not None

    @property
    def use_torchrun(self) -> bool:
        return (
            self.nnodes > 1
            or self.nproc_per_node is not None
            or self.master_addr is not None
            or self.master_port is not None
            # DeepSpeed needs torchrun's process group, unless Ray sets one up in its own workers
            # (LLaMA-Factory would run torchrun and then Ray inside every rank).
            or (self.deepspeed is not None and not self.use_ray)
        )

    def docker_gpus(self) -> Literal["all"] | list[str] | None:
        """The value for DockerOptions.gpus: all GPUs unless chosen; None for CPU only."""
        if self.gpus is None or self.gpus == "all":
            return "all"
        return list(self.gpus) or None

    def docker_network(self) -> str | None:
        """The container network: the host's when several machines must reach each other's torchrun."""
        return "host" if self.nnodes > 1 else None

    def check(self) -> None:
        """Raise UsageError naming the first combination that cannot work."""
        if self.nnodes < 1:
            raise UsageError(f"--nnodes must be at least 1, not {self.nnodes}.")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(
                f"--node-rank {self.node_rank} is out of range for --nnodes {self.nnodes}; "
                f"use 0 to {self.nnodes - 1}."
            )
        if self.nnodes > 1 and not self.master_addr:
            raise UsageError(
                f"--nnodes {self.nnodes} needs --master-addr, the address of the node with rank 0 "
                f"that every node can reach."
            )
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise UsageError(f"--master-port {self.master_port} is not a TCP port; use 1 to 65535.")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise UsageError(f"--nproc-per-node must be at least 1, not {self.nproc_per_node}.")
        if self.ray_num_workers is not None and self.ray_num_workers < 1:
            raise UsageError(f"--ray-num-workers must be at least 1, not {self.ray_num_workers}.")
        if self.deepspeed is not None and self.deepspeed not in DEEPSPEED_PRESETS:
            raise UsageError(
                f"--deepspeed {self.deepspeed!r} is not a preset; use one of {', '.join(DEEPSPEED_PRESETS)}."
            )
        if self.use_ray and (
            self.nnodes > 1 or self.nproc_per_node is not None or self.master_addr or self.master_port
        ):
            raise UsageError(
                "--ray-address/--ray-num-workers cannot be combined with the torchrun options "
                "(--nnodes, --nproc-per-node, --master-addr, --master-port); Ray places the workers itself."
            )
        if isinstance(self.gpus, list) and self.gpus and self.nproc_per_node is not None:
            if self.nproc_per_node > len(self.gpus):
                raise UsageError(
                    f"--nproc-per-node {self.nproc_per_node} is more than the {len(self.gpus)} GPUs "
                    f"chosen with --gpus; start at most one process per GPU."
                )


def apply(
    options: DistributedOptions,
    config: dict[str, Any],
    env: dict[str, str],
    run_dir: Path,
    *,
    backend: str = "local",
    files: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Copies of `config` and `env` with the distributed settings applied.

    Points `deepspeed:` at run_dir/ds_PRESET.json when a preset is chosen (a host path;
    docker_backend.container_config maps it into the container); with `files` (planning) the JSON
    is added there as {"ds_PRESET.json": text} to be written with the run, else written at once. With backend
    "docker" the GPUs are chosen by the container's DeviceRequest (DistributedOptions.docker_gpus),
    so CUDA_VISIBLE_DEVICES is left alone.
    """
    options.check()
    config = dict(config)
    env = dict(env)

    if isinstance(options.gpus, list) and backend == "local":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(options.gpus)
    if options.gpus == [] and options.use_torchrun:
        config.setdefault("ddp_backend", "gloo")  # CPU processes talk over gloo, not NCCL

    if options.use_torchrun:
        env["FORCE_TORCHRUN"] = "1"
        env["NNODES"] = str(options.nnodes)
        env["NODE_RANK"] = str(options.node_rank)
        nproc = options.nproc_per_node
        if nproc is None and isinstance(options.gpus, list) and options.gpus:
            nproc = len(options.gpus)
        if nproc is not None:
            env["NPROC_PER_NODE"] = str(nproc)
        if options.master_addr:
            env["MASTER_ADDR"] = options.master_addr
        if options.master_port is not None:
            env["MASTER_PORT"] = str(options.master_port)

    if options.deepspeed is not None:
        from wrapper.render import render_deepspeed, write_deepspeed

        if files is None:
            path = write_deepspeed(options.deepspeed, run_dir)
        else:
            path = run_dir / f"ds_{options.deepspeed}.json"
            files[path.name] = json.dumps(render_deepspeed(options.deepspeed), indent=2) + "\n"
        config["deepspeed"] = str(path)

    if options.use_ray:
        env["USE_RAY"] = "1"
        config["ray_num_workers"] = options.ray_num_workers or 1
        if options.ray_address is not None:
            init_kwargs = config.get("ray_init_kwargs")
            base = dict(init_kwargs) if isinstance(init_kwargs, dict) else {}
            config["ray_init_kwargs"] = {**base, "address": options.ray_address}
    return config, env


F = TypeVar("F", bound=Callable[..., Any])


def distributed_options(command: F) -> F:
    """Add the distributed flags to a click command; it receives them as one `distributed` argument."""
    from wrapper.cli.options import gpus_option

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gpus = kwargs.pop("gpus")
        kwargs["distributed"] = DistributedOptions(
            gpus=parse_gpus(gpus) if gpus is not None else None,
            nnodes=kwargs.pop("nnodes"),
            node_rank=kwargs.pop("node_rank"),
            master_addr=kwargs.pop("master_addr"),
            master_port=kwargs.pop("master_port"),
            nproc_per_node=kwargs.pop("nproc_per_node"),
            deepspeed=kwargs.pop("deepspeed"),
            ray_address=kwargs.pop("ray_address"),
            ray_num_workers=kwargs.pop("ray_num_workers"),
        )
        kwargs["distributed"].check()
        return command(*args, **kwargs)

    flags = [
        gpus_option,  # shared with `lfwrap webui`: one syntax everywhere
        click.option(
            "--nnodes",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            metavar="N",
            help="Number of machines taking part (torchrun NNODES).",
        ),
        click.option(
            "--node-rank",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            metavar="RANK",
            help="This machine's rank, 0 to nnodes-1 (torchrun NODE_RANK).",
        ),
        click.option(
            "--master-addr",
            metavar="HOST",
            help="Address of the rank-0 machine; required with --nnodes > 1 (MASTER_ADDR).",
        ),
        click.option(
            "--master-port",
            type=click.IntRange(1, 65535),
            metavar="PORT",
            help="Rendezvous port on the rank-0 machine (MASTER_PORT; default: a free port).",
        ),
        click.option(
            "--nproc-per-node",
            type=click.IntRange(min=1),
            metavar="N",
            help="Processes per machine, one per GPU (NPROC_PER_NODE); forces torchrun.",
        ),
        click.option(
            "--deepspeed",
            type=click.Choice(DEEPSPEED_PRESETS),
            help="DeepSpeed ZeRO preset; writes its JSON into the run and launches with torchrun "
            "(with Ray: in Ray's workers). Needs deepspeed installed.",
        ),
        click.option(
            "--ray-address",
            metavar="ADDR",
            help="Train on a Ray cluster (USE_RAY=1, ray_init_kwargs.address), e.g. auto.",
        ),
        click.option(
            "--ray-num-workers",
            type=click.IntRange(min=1),
            metavar="N",
            help="Number of Ray training workers (ray_num_workers); enables Ray.",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for flag in reversed(flags):
        decorated = flag(decorated)
    return decorated  # type: ignore[return-value]
