"""What bench_train and bench_eval share: a scratch LFWRAP_HOME holding the tiny demo model and the
identity set, timed subprocesses, and the bare `llamafactory-cli train` run of a config lfwrap wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LFWRAP = [sys.executable, "-m", "wrapper.cli.main"]


@dataclass
class Scratch:
    work: Path  # the scratch folder (removed afterwards); LFWRAP_HOME is work/home
    env: dict[str, str]  # for subprocesses: this environment, LFWRAP_HOME, offline
    model: Path  # the tiny demo Llama
    dataset: str  # the filled identity set's name
    sets: list[str]  # the demo's verified training settings as --set arguments


def in_scratch(prefix: str, bench: Callable[[Scratch], None]) -> None:
    """Run `bench` with a fresh scratch home (model built, identity set filled), removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        env = {**os.environ, "LFWRAP_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
        os.environ.update(LFWRAP_HOME=env["LFWRAP_HOME"])
        from wrapper.demo import DEMO_TRAIN_SETS, prepare_identity_demo
        from wrapper.demo_model import build_demo_model

        model = build_demo_model(work / "tiny-llama")
        sets = [arg for item in DEMO_TRAIN_SETS for arg in ("--set", item)]
        bench(Scratch(work, env, model, prepare_identity_demo(), sets))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds `command` took; the bench stops with its output when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def bare_train(config_path: Path, folder: Path, env: dict[str, str], name: str = "config.yaml") -> float:
    """`llamafactory-cli train` on a copy of the config lfwrap wrote (in `folder`, a fresh output folder);
    its wall time."""
    from wrapper.launch.local import llamafactory_cli

    config: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    folder.mkdir()
    config["output_dir"] = str(folder / "output")
    (folder / name).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return timed([llamafactory_cli(), "train", name], env, folder)
