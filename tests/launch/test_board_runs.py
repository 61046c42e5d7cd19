"""LLaMA Board and the CLI share runs: a run LLaMA Board saved is served, exported and evaluated by its
`lfwrap runs` name (read-only; lfwrap's files go to $LFWRAP_HOME/llamaboard/<name>/), and a finished CLI
run is linked into saves/<model>/<type>/<run> where LLaMA Board's checkpoint list finds it.

The board folders are written as LLaMA-Factory 0.9.5's webui/runner.py writes them (training_args.yaml
with paths relative to its working directory, llamaboard_config.yaml, then the adapter files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from wrapper.errors import RunError
from wrapper.launch import board, board_links, runs

NAME = "Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00"


def board_run(home: Path, name: str = NAME, finished: bool = True, **args: object) -> Path:
    """A LLaMA Board run folder: the files its runner writes, with its relative paths."""
    model, method, run = name.split("/")
    folder = home / "saves" / model / method / run
    folder.mkdir(parents=True)
    config = {"stage": "sft", "do_train": True, "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
              "finetuning_type": method, "template": "qwen", "dataset_dir": "data", "dataset": "identity",
              "output_dir": f"saves/{model}/{method}/{run}", "plot_loss": True, **args}  # fmt: skip
    (folder / "training_args.yaml").write_text(yaml.safe_dump(config))
    (folder / "llamaboard_config.yaml").write_text(yaml.safe_dump({"top.model_name": model}))
    if finished:
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_paths_are_read_as_llamaboard_meant_them(lfwrap_home: Path, tmp_path: Path) -> None:
    earlier = board_run(lfwrap_home, "Qwen2.5-0.5B-Instruct/lora/first")
    board_run(lfwrap_home, adapter_name_or_path="saves/Qwen2.5-0.5B-Instruct/lora/first")
    config = board.board_config(board.find_board_run(NAME))
    assert config["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id stays one
    assert config["adapter_name_or_path"] == str(earlier)
    assert config["dataset_dir"] == str(lfwrap_home / "datasets")  # where `lfwrap webui` points data/
    assert config["output_dir"] == str(lfwrap_home / "saves" / NAME)
    # Training on top of an adapter resumes it (LLaMA-Factory's default): the run folder replaces it ...
    assert board.tuned_adapters(config, "OUT") == ["OUT"]
    # ... unless create_new_adapter, which merges it first.
    assert board.tuned_adapters({**config, "create_new_adapter": True}, "OUT") == [str(earlier), "OUT"]
    # The Docker web UI writes the same relative paths from /app; absolute /app/saves paths map too.
    assert board.host_path("/app/saves/M/lora/x") == str(lfwrap_home / "saves" / "M" / "lora" / "x")
    model = tmp_path / "local-model"
    model.mkdir()
    assert board.host_path(str(model)) == str(model)


def test_a_path_only_the_container_had_is_refused(lfwrap_home: Path) -> None:
    board_run(lfwrap_home, model_name_or_path="/app/models/Qwen2.5-0.5B")
    with pytest.raises(RunError, match="/models/Qwen2.5-0.5B, which does not exist on this machine"):
        board.board_config(board.find_board_run(NAME))


def test_serve_and_export_configs_of_a_board_run(lfwrap_home: Path) -> None:
    from wrapper.launch.export import board_export_config
    from wrapper.launch.serve import board_infer_config

    folder = board_run(lfwrap_home)
    before = snapshot(folder)
    config, path = board_infer_config(NAME)
    assert (config["model_name_or_path"], config["adapter_name_or_path"]) == (
        "Qwen/Qwen2.5-0.5B-Instruct",
        str(folder),
    )
    assert config["template"] == "qwen"
    assert path == lfwrap_home / "llamaboard" / NAME / "serve.yaml"
    merged = board_export_config(board.find_board_run(NAME), lfwrap_home / "merged")
    assert (merged["adapter_name_or_path"], merged["export_dir"]) == (
        str(folder),
        str(lfwrap_home / "merged"),
    )
    assert snapshot(folder) == before  # planning wrote nothing into the board's folder


def test_a_full_finetune_is_served_as_a_model_and_not_exported(lfwrap_home: Path) -> None:
    from wrapper.launch.export import board_export_config
    from wrapper.launch.serve import board_infer_config

    name = "Qwen2.5-0.5B-Instruct/full/train_1"
    folder = board_run(lfwrap_home, name, finished=False)
    (folder / "config.json").write_text("{}")
    config, _ = board_infer_config(name)
    assert config["model_name_or_path"] == str(folder) and "adapter_name_or_path" not in config
    with pytest.raises(RunError, match="already a standalone model"):
        board_export_config(board.find_board_run(name), lfwrap_home / "merged")


def test_eval_plan_of_a_board_run_reports_beside_it(lfwrap_home: Path, tmp_path: Path) -> None:
    from wrapper.evaluate.plan import plan_eval

    model = tmp_path / "tiny"
    model.mkdir()
    folder = board_run(lfwrap_home, model_name_or_path=str(model), template="default")
    before = snapshot(folder)
    plan = plan_eval(NAME, datasets="identity", max_samples=2)
    tuned = next(item.config for item in plan.passes if item.name == "tuned-predict")
    base = next(item.config for item in plan.passes if item.name == "base-predict")
    assert tuned["adapter_name_or_path"] == str(folder) and tuned["model_name_or_path"] == str(model)
    assert base["model_name_or_path"] == str(model) and "adapter_name_or_path" not in base
    assert tuned["template"] == "default"
    assert plan.out.parent == lfwrap_home / "llamaboard" / NAME / "eval"
    assert plan.output_dir == folder
    assert snapshot(folder) == before


def test_unfinished_and_unknown_board_runs_are_one_sentence(lfwrap_home: Path, lfwrap) -> None:
    board_run(lfwrap_home, finished=False)
    for command in ("serve", "export", "eval"):
        proc = lfwrap(command, NAME)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "has no saved adapter or model yet" in proc.stderr, proc.stderr
    proc = lfwrap("serve", NAME.replace("10-00-00", "10-00-01"))
    assert f"did you mean '{NAME}'" in proc.stderr and "Traceback" not in proc.stderr
    proc = lfwrap("export", NAME.rsplit("/", 1)[-1])  # the run part alone
    assert f"LLaMA Board's run is named '{NAME}'" in proc.stderr and "Traceback" not in proc.stderr


def test_runs_show_a_board_run_and_leave_it_alone(lfwrap_home: Path, lfwrap) -> None:
    folder = board_run(lfwrap_home)
    (folder / "trainer_log.jsonl").write_text(
        "".join(f'{{"current_steps": {n}, "total_steps": 4, "loss": {2.0 / n}, "percentage": {25 * n}}}\n'
                for n in range(1, 5))
    )  # fmt: skip
    (folder / "running_log.txt").write_text("[INFO] training done\n")
    before = snapshot(folder)
    shown = lfwrap("runs", "show", NAME, check=True).stdout
    assert f"Run {NAME}: succeeded (trained in LLaMA Board" in shown and "steps      4/4 (100%)" in shown
    assert f"  $ lfwrap serve {NAME}" in shown and f"  $ lfwrap eval {NAME} --dataset NAME" in shown
    details = json.loads(lfwrap("runs", "show", NAME, "--json", check=True).stdout)
    assert details["config"]["output_dir"] == str(folder) and details["status"] == "succeeded"
    assert lfwrap("runs", "logs", NAME, check=True).stdout == "[INFO] training done\n"
    for args in (("remove", NAME, "--yes"), ("cancel", NAME)):
        proc = lfwrap("runs", *args)
        assert proc.returncode == 1 and "was trained in LLaMA Board, which owns it" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert snapshot(folder) == before


def test_llamaboard_eval_folders_are_not_runs(lfwrap_home: Path) -> None:
    board_run(lfwrap_home)
    folder = lfwrap_home / "saves" / "Qwen2.5-0.5B-Instruct" / "lora" / "eval_2026-12-02-11-00-00"
    folder.mkdir()
    (folder / "training_args.yaml").write_text(
        yaml.safe_dump({"stage": "sft", "do_predict": True, "model_name_or_path": "m"})
    )
    assert [run.name for run in runs.llamaboard_runs()] == [NAME]


# --- CLI runs in LLaMA Board's checkpoint list ----------------------------------------------------------


def cli_run(home: Path, name: str, model: str, status: str = "succeeded", method: str = "lora") -> Path:
    """A CLI run folder as `lfwrap train` leaves it (meta.json, config.yaml, output/ with the adapter)."""
    run_dir = home / "runs" / name
    output = run_dir / "output"
    output.mkdir(parents=True)
    (output / "adapter_config.json").write_text("{}")
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({"model_name_or_path": model, "finetuning_type": method, "output_dir": str(output)})
    )
    meta = runs.RunMeta(name=name, template="sft_lora", output_dir=str(output), status=status)  # type: ignore[arg-type]
    runs.write_meta(run_dir, meta)
    return run_dir


def test_finished_cli_runs_are_linked_by_model_name(lfwrap_home: Path, tmp_path: Path) -> None:
    cli_run(lfwrap_home, "conch", "Qwen/Qwen2.5-0.5B-Instruct")
    local = tmp_path / "Qwen2.5-0.5B-Instruct"  # a local copy named like the hub model
    local.mkdir()
    cli_run(lfwrap_home, "local", str(local))
    cli_run(lfwrap_home, "mine", str(tmp_path / "my-model"))
    cli_run(lfwrap_home, "busy", "Qwen/Qwen2.5-0.5B-Instruct", status="running")
    report = board_links.sync_links()
    saves = lfwrap_home / "saves"
    assert sorted(str(p.relative_to(saves)) for p in report.made) == [
        "Custom/lora/mine", "Qwen2.5-0.5B-Instruct/lora/conch", "Qwen2.5-0.5B-Instruct/lora/local",
    ]  # fmt: skip
    link = saves / "Qwen2.5-0.5B-Instruct" / "lora" / "conch"
    assert link.is_symlink() and link.resolve() == (lfwrap_home / "runs" / "conch" / "output").resolve()
    assert runs.llamaboard_runs() == []  # the links are not LLaMA Board runs
    assert board_links.sync_links().made == []  # idempotent


def test_a_model_path_set_in_llamaboard_gives_its_name(lfwrap_home: Path, tmp_path: Path) -> None:
    model = tmp_path / "weights"
    model.mkdir()
    cache = lfwrap_home / "webui" / "llamaboard_cache"
    cache.mkdir(parents=True)  # what LLaMA Board's save_config writes when a model path is entered
    config = {"lang": "en", "last_model": "Llama-3-8B-Instruct",
              "path_dict": {"Llama-3-8B-Instruct": str(model)}}  # fmt: skip
    (cache / "user_config.yaml").write_text(yaml.safe_dump(config))
    cli_run(lfwrap_home, "conch", str(model))
    [link] = board_links.sync_links().made
    assert link == lfwrap_home / "saves" / "Llama-3-8B-Instruct" / "lora" / "conch"


def test_a_users_folder_is_never_replaced(lfwrap_home: Path) -> None:
    cli_run(lfwrap_home, "conch", "Qwen/Qwen2.5-0.5B-Instruct")
    theirs = board_run(lfwrap_home, "Qwen2.5-0.5B-Instruct/lora/conch")
    before = snapshot(theirs)
    report = board_links.sync_links()
    assert report.made == [] and "is not lfwrap's link" in report.skipped[0]
    assert not theirs.is_symlink() and snapshot(theirs) == before
    other = lfwrap_home / "saves" / "Custom" / "lora" / "x"  # a link the user made elsewhere
    other.parent.mkdir(parents=True)
    other.symlink_to(theirs)
    board_links.sync_links()
    assert other.is_symlink()


def test_links_go_when_their_run_goes(lfwrap_home: Path, lfwrap) -> None:
    cli_run(lfwrap_home, "conch", "Qwen/Qwen2.5-0.5B-Instruct")
    cli_run(lfwrap_home, "old", "Qwen/Qwen2.5-0.5B-Instruct")
    board_links.sync_links()
    saves = lfwrap_home / "saves" / "Qwen2.5-0.5B-Instruct" / "lora"
    lfwrap("runs", "remove", "conch", "--yes", check=True)
    assert not os.path.lexists(saves / "conch")
    import shutil

    shutil.rmtree(lfwrap_home / "runs" / "old")  # removed behind lfwrap's back: the next sync drops it
    assert board_links.sync_links().removed == [saves / "old"]
    assert not os.path.lexists(saves / "old")


def test_docker_web_ui_links_the_runs_and_mounts_them_at_their_own_path(
    engine, lfwrap_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wrapper import webui

    monkeypatch.setenv("HF_HOME", str(lfwrap_home / "hf"))
    engine.hold = True
    cli_run(lfwrap_home, "conch", "Qwen/Qwen2.5-0.5B-Instruct")
    ui = webui.start_docker(port=_free_port(), image="hiyouga/llamafactory:latest")
    try:
        [body] = engine.bodies("POST", "/containers/create")
        runs_folder = (lfwrap_home / "runs").resolve()
        binds = _binds(body["HostConfig"])
        assert f"{runs_folder}:{runs_folder}:ro" in binds
        assert f"{lfwrap_home / 'saves'}:/app/saves:rw" in binds
        link = lfwrap_home / "saves" / "Qwen2.5-0.5B-Instruct" / "lora" / "conch"
        assert Path(os.readlink(link)) == runs_folder / "conch" / "output"  # the same path inside
    finally:
        ui.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_docker_web_ui_mounts_the_link_targets(lfwrap_home: Path, tmp_path: Path) -> None:
    from wrapper import webui

    runs_folder = lfwrap_home / "runs"
    data, saves = lfwrap_home / "d", lfwrap_home / "s"
    for folder in (data, saves, runs_folder):
        folder.mkdir(exist_ok=True)
    spec = webui.docker_spec(
        *webui.docker_setup(
            image="i",
            host="127.0.0.1",
            port=1,
            data_dir=data,
            saves=saves,
            hf_cache=lfwrap_home.parent / "hf",
            host_paths=(runs_folder,),
        )
    )
    assert f"{runs_folder}:{runs_folder}:ro" in _binds(spec["HostConfig"])


def _binds(host_config: dict) -> list[str]:
    """The Engine API's mounts written as `docker run -v` would: source:target:ro|rw."""
    return [f"{m['Source']}:{m['Target']}:{'ro' if m['ReadOnly'] else 'rw'}" for m in host_config["Mounts"]]
