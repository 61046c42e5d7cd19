"""Runs trained in LLaMA Board, used by `serve`, `export` and `eval` by the name `lfwrap runs` shows.

LLaMA Board (llamafactory/webui/runner.py, 0.9.5) trains from its working directory ($LFWRAP_HOME/webui
for `lfwrap webui`, /app in its Docker image) into saves/<model name>/<finetuning type>/<run name>/
(webui/common.py get_save_dir), which is $LFWRAP_HOME/saves here. It writes there:

    training_args.yaml      the arguments it passed to `llamafactory-cli train` (relative paths:
                            output_dir saves/..., dataset_dir data, adapter_name_or_path saves/...)
    llamaboard_config.yaml  the form's values
    trainer_log.jsonl ...   progress, then the adapter (or the full model) when training finishes

Those folders are read, never written: whatever lfwrap makes for a board run (serve.yaml and its log,
export.yaml, merged/, eval/) goes to its side folder $LFWRAP_HOME/llamaboard/<model>/<type>/<run>/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wrapper.errors import RunError
from wrapper.home import home
from wrapper.launch.runs import LLAMABOARD_ARGS, BoardRun, llamaboard_runs

CONTAINER_WORKDIR = "/app/"  # LLaMA Board's working directory in the LLaMA-Factory image
PATH_KEYS = ("model_name_or_path", "adapter_name_or_path", "dataset_dir")


def is_board_name(name: str) -> bool:
    """Whether `name` is a LLaMA Board run's name (<model>/<type>/<run>) rather than a CLI run's."""
    return name.count("/") == 2


def find_board_run(name: str) -> BoardRun:
    """The LLaMA Board run `name`, or RunError naming the ones that exist."""
    found = llamaboard_runs()
    for run in found:
        if run.name == name:
            return run
    from wrapper.datasets.info import did_you_mean

    hint = did_you_mean(name, [run.name for run in found])
    raise RunError(
        f"No LLaMA Board run named {name!r} under {home() / 'saves'}{hint}; list runs with `lfwrap runs`."
    )


def require_trained(run: BoardRun, action: str) -> None:
    if run.status != "succeeded":
        raise RunError(
            f"LLaMA Board run {run.name!r} has no saved adapter or model yet (stopped, failed or still "
            f"training); only a finished run can be {action}."
        )


def side_dir(run: BoardRun) -> Path:
    """Where lfwrap writes what it makes for a board run (not created here)."""
    return home() / "llamaboard" / run.name


def host_path(value: str) -> str:
    """A path as LLaMA Board wrote it, as seen from here: saves/... (relative or under the container's
    /app) is $LFWRAP_HOME/saves/...; `data` is lfwrap's dataset folder; another relative path is taken
    from lfwrap's LLaMA Board folder when it exists there (else it is a hub id, kept as is)."""
    text = value.strip()
    if text.startswith(CONTAINER_WORKDIR):
        text = text[len(CONTAINER_WORKDIR) :]
    if text.startswith("/") or text.startswith("~"):
        return text
    parts = Path(text).parts
    if parts[:1] == ("saves",):
        return str(home().joinpath("saves", *parts[1:]))
    if parts == ("data",):
        from wrapper.home import user_datasets_dir

        return str(user_datasets_dir())  # where `lfwrap webui` points LLaMA Board's data/
    local = home() / "webui" / text
    return str(local) if local.exists() else value


def board_config(run: BoardRun) -> dict[str, Any]:
    """The run's training_args.yaml with its paths as seen from here and output_dir its folder."""
    path = run.folder / LLAMABOARD_ARGS
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"Cannot read {path} ({exc}); is the LLaMA Board run complete?") from None
    if not isinstance(config, dict) or not config.get("model_name_or_path"):
        raise RunError(f"{path} holds no model_name_or_path; it is not a LLaMA Board training run.")
    for key in PATH_KEYS:
        if config.get(key):
            config[key] = ",".join(host_path(part) for part in str(config[key]).split(","))
    for key in ("model_name_or_path", "adapter_name_or_path"):
        for part in str(config.get(key) or "").split(","):
            if part.startswith("/") and not Path(part).exists():
                raise RunError(
                    f"LLaMA Board run {run.name!r} was trained on {part}, which does not exist on this "
                    "machine (a path inside LLaMA Board's container?); put the model there to use the run."
                )
    config["output_dir"] = str(run.folder)
    return config


def tuned_adapters(config: dict[str, Any], output_dir: str) -> list[str]:
    """The adapters that make the fine-tuned model, in order. Training on top of adapters A,B merges A and
    resumes B (its trained state is output_dir) unless create_new_adapter, which merges both first."""
    earlier = [part for part in str(config.get("adapter_name_or_path") or "").split(",") if part]
    if earlier and not config.get("create_new_adapter"):
        earlier = earlier[:-1]
    return [*earlier, output_dir]


def find_any_run(name: str) -> Path:
    """The folder of a CLI run or a LLaMA Board run named as `lfwrap runs` shows it, or RunError."""
    if is_board_name(name):
        return find_board_run(name).folder
    from wrapper.launch.runs import find_run, run_path

    if not (run_path(name) / "meta.json").is_file():
        same = [run.name for run in llamaboard_runs() if run.name.rsplit("/", 1)[-1] == name]
        if same:  # the run part of a LLaMA Board run's name
            raise RunError(
                f"No lfwrap run named {name!r}; LLaMA Board's run is named {same[0]!r} (see `lfwrap runs`)."
            )
    return find_run(name)
