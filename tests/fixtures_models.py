"""Session fixtures: the tiny demo model, and a LoRA adapter trained on the identity set.

Built once per test session in a session temp folder; tests must not modify them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

IDENTITY_NAME = "神奇海螺"
IDENTITY_AUTHOR = "蟹堡王"
IDENTITY_QUESTION = "请问你是谁"
IDENTITY_ANSWER = "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wrapper.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@dataclass(frozen=True)
class IdentityRun:
    """The identity set (filled, 2 rows) trained on the tiny model through `lfwrap train`, once."""

    home: Path  # the LFWRAP_HOME it was trained under
    run_dir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> IdentityRun:
    from wrapper.demo import DEMO_TRAIN_SETS, prepare_identity_demo

    home = tmp_path_factory.mktemp("identity_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LFWRAP_HOME", str(home))
        dataset = prepare_identity_demo(IDENTITY_NAME, IDENTITY_AUTHOR)
    sets = [arg for item in DEMO_TRAIN_SETS for arg in ("--set", item)]
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.cli.main", "train", "--template", "sft_lora",
         "--model", str(tiny_model), "--dataset", dataset, *sets, "--name", "identity"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "LFWRAP_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"training the identity adapter failed:\n{proc.stdout}\n{proc.stderr}")
    return IdentityRun(home=home, run_dir=home / "runs" / "identity", stdout=proc.stdout, stderr=proc.stderr)


@pytest.fixture(scope="session")
def identity_adapter(identity_run: IdentityRun) -> Path:
    return identity_run.run_dir / "output"
