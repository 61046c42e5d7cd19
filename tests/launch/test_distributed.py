"""Distributed options: the exact environment and config handed to LLaMA-Factory.

DeepSpeed and Ray are not installed in this environment, so their runs cannot happen here; these
tests pin what LLaMA-Factory is given. The torchrun path runs for real in test_distributed_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from wrapper.errors import UsageError
from wrapper.launch.distributed import DistributedOptions, apply, distributed_options, parse_gpus
from wrapper.launch.docker_backend import DockerOptions
from wrapper.launch.docker_paths import container_config, effective_mounts

BASE = {"stage": "sft", "output_dir": "/x/out"}


def test_defaults_change_nothing(tmp_path):
    config, env = apply(DistributedOptions(), dict(BASE), {"KEEP": "1"}, tmp_path)
    assert config == BASE
    assert env == {"KEEP": "1"}
    assert list(tmp_path.iterdir()) == []


def test_inputs_are_not_mutated(tmp_path):
    config, env = dict(BASE), {"KEEP": "1"}
    apply(DistributedOptions(nproc_per_node=2, deepspeed="z2", gpus=["0", "1"]), config, env, tmp_path)
    assert config == BASE and env == {"KEEP": "1"}


def test_single_node_chosen_gpus(tmp_path):
    config, env = apply(DistributedOptions(gpus=["1", "3"]), dict(BASE), {}, tmp_path)
    assert env == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert config == BASE
    config, env = apply(DistributedOptions(gpus=["1", "3"], nproc_per_node=2), dict(BASE), {}, tmp_path)
    assert env == {"CUDA_VISIBLE_DEVICES": "1,3", "FORCE_TORCHRUN": "1", "NNODES": "1", "NODE_RANK": "0",
                   "NPROC_PER_NODE": "2"}


def test_cpu_processes_use_gloo(tmp_path):
    config, env = apply(DistributedOptions(gpus=[], nproc_per_node=2), dict(BASE), {}, tmp_path)
    assert env == {"CUDA_VISIBLE_DEVICES": "", "FORCE_TORCHRUN": "1", "NNODES": "1", "NODE_RANK": "0",
                   "NPROC_PER_NODE": "2"}
    assert config == {**BASE, "ddp_backend": "gloo"}
    config, _ = apply(DistributedOptions(gpus=[], nproc_per_node=2), {**BASE, "ddp_backend": "mpi"}, {},
                      tmp_path)
    assert config["ddp_backend"] == "mpi"  # the user's choice stays


def test_multi_node_torchrun_variables(tmp_path):
    options = DistributedOptions(nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29500,
                                 nproc_per_node=8)
    config, env = apply(options, dict(BASE), {}, tmp_path)
    assert env == {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8",
                   "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    assert config == BASE


@pytest.mark.parametrize("preset,stage,offload",
                         [("z2", 2, False), ("z3", 3, False), ("z3_offload", 3, True)])
def test_deepspeed_preset_written_into_the_run(tmp_path, preset, stage, offload):
    config, env = apply(DistributedOptions(deepspeed=preset), dict(BASE), {}, tmp_path)
    path = tmp_path / f"ds_{preset}.json"
    assert config == {**BASE, "deepspeed": str(path)}
    # LLaMA-Factory refuses DeepSpeed outside torchrun ("Please use FORCE_TORCHRUN=1 ...").
    assert env == {"FORCE_TORCHRUN": "1", "NNODES": "1", "NODE_RANK": "0"}
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in data["zero_optimization"]) is offload
    assert data["train_micro_batch_size_per_gpu"] == "auto"


def test_docker_backend_leaves_gpu_choice_to_the_container(tmp_path, lfwrap_home):
    run_dir = lfwrap_home / "runs" / "r1"
    run_dir.mkdir(parents=True)
    options = DistributedOptions(gpus=["2", "3"], deepspeed="z3")
    config, env = apply(options, {**BASE, "output_dir": str(run_dir / "output")}, {}, run_dir,
                        backend="docker")
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["NPROC_PER_NODE"] == "2"
    assert options.docker_gpus() == ["2", "3"]
    mounts = effective_mounts(run_dir=run_dir, options=DockerOptions(), mounts=[])
    inside = container_config(config, mounts)
    assert inside["deepspeed"] == "/app/run/ds_z3.json"
    assert inside["output_dir"] == "/app/run/output"
    assert DistributedOptions().docker_network() is None
    assert DistributedOptions(nnodes=2, master_addr="10.0.0.1").docker_network() == "host"
    assert DistributedOptions().docker_gpus() == "all"
    assert DistributedOptions(gpus=[]).docker_gpus() is None


def test_ray(tmp_path):
    config, env = apply(DistributedOptions(ray_address="auto", ray_num_workers=4), dict(BASE), {}, tmp_path)
    assert env == {"USE_RAY": "1"}
    assert config == {**BASE, "ray_num_workers": 4, "ray_init_kwargs": {"address": "auto"}}
    config, env = apply(DistributedOptions(ray_address="ray://head:10001"),
                        {**BASE, "ray_init_kwargs": {"namespace": "ft"}}, {}, tmp_path)
    assert config["ray_init_kwargs"] == {"namespace": "ft", "address": "ray://head:10001"}
    assert config["ray_num_workers"] == 1
    config, env = apply(DistributedOptions(ray_num_workers=2), dict(BASE), {}, tmp_path)
    assert env == {"USE_RAY": "1"} and config == {**BASE, "ray_num_workers": 2}  # local ray.init()


@pytest.mark.parametrize("options,message", [
    (DistributedOptions(nnodes=2, node_rank=2, master_addr="h"),
     "--node-rank 2 is out of range for --nnodes 2; use 0 to 1."),
    (DistributedOptions(nnodes=2),
     "--nnodes 2 needs --master-addr, the address of the node with rank 0 that every node can reach."),
    (DistributedOptions(nnodes=0), "--nnodes must be at least 1, not 0."),
    (DistributedOptions(master_port=70000), "--master-port 70000 is not a TCP port; use 1 to 65535."),
    (DistributedOptions(nproc_per_node=0), "--nproc-per-node must be at least 1, not 0."),
    (DistributedOptions(ray_num_workers=0), "--ray-num-workers must be at least 1, not 0."),
    (DistributedOptions(deepspeed="z4"),  # type: ignore[arg-type]
     "--deepspeed 'z4' is not a preset; use one of z2, z3, z3_offload."),
    (DistributedOptions(ray_address="auto", nproc_per_node=2),
     "--ray-address/--ray-num-workers cannot be combined with the torchrun options (--nnodes, "
     "--nproc-per-node, --master-addr, --master-port); Ray places the workers itself."),
    (DistributedOptions(gpus=["0"], nproc_per_node=2),
     "--nproc-per-node 2 is more than the 1 GPUs chosen with --gpus; start at most one process per GPU."),
])
def test_impossible_combinations(tmp_path, options, message):
    with pytest.raises(UsageError) as info:
        apply(options, dict(BASE), {}, tmp_path)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


def test_parse_gpus():
    assert parse_gpus("all") == "all"
    assert parse_gpus("none") == []
    assert parse_gpus(" 0, 2 ") == ["0", "2"]
    for bad in ("0,0", "gpu0", "1;2"):
        with pytest.raises(UsageError, match=r"^--gpus .* is not valid; use all, none, or distinct"):
            parse_gpus(bad)


@click.command()
@distributed_options
def _probe(distributed: DistributedOptions) -> None:
    click.echo(repr(distributed))


def test_click_decorator_builds_the_options():
    runner = CliRunner()
    result = runner.invoke(_probe, ["--gpus", "0,1", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                                    "10.1.1.1", "--master-port", "29400", "--nproc-per-node", "2",
                                    "--deepspeed", "z3_offload"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(DistributedOptions(
        gpus=["0", "1"], nnodes=2, node_rank=1, master_addr="10.1.1.1", master_port=29400, nproc_per_node=2,
        deepspeed="z3_offload"))
    result = runner.invoke(_probe, [])
    assert result.output.strip() == repr(DistributedOptions())
    result = runner.invoke(_probe, ["--ray-address", "auto", "--ray-num-workers", "3"])
    assert result.output.strip() == repr(DistributedOptions(ray_address="auto", ray_num_workers=3))


def test_click_decorator_rejects_bad_input():
    runner = CliRunner()
    result = runner.invoke(_probe, ["--deepspeed", "z9"])
    assert result.exit_code == 2 and "'z9' is not one of 'z2', 'z3', 'z3_offload'" in result.output
    result = runner.invoke(_probe, ["--nnodes", "2"])
    assert isinstance(result.exception, UsageError)
    assert "--nnodes 2 needs --master-addr" in str(result.exception)


def test_click_help_names_every_flag():
    result = CliRunner().invoke(_probe, ["--help"])
    for flag in ("--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--nproc-per-node",
                 "--deepspeed", "--ray-address", "--ray-num-workers"):
        assert flag in result.output
    assert "z2|z3|z3_offload" in result.output


def test_deepspeed_json_is_the_rendered_template(tmp_path: Path):
    from wrapper.render import render_deepspeed

    apply(DistributedOptions(deepspeed="z3"), dict(BASE), {}, tmp_path)
    assert json.loads((tmp_path / "ds_z3.json").read_text(encoding="utf-8")) == render_deepspeed("z3")


def test_ray_with_deepspeed_leaves_the_processes_to_ray(tmp_path):
    config, env = apply(DistributedOptions(ray_num_workers=2, deepspeed="z2"), dict(BASE), {}, tmp_path)
    assert env == {"USE_RAY": "1"}  # FORCE_TORCHRUN would start Ray once per torchrun rank
    assert config == {**BASE, "ray_num_workers": 2, "deepspeed": str(tmp_path / "ds_z2.json")}
