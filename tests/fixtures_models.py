"""Session fixtures: the tiny demo model, and a LoRA adapter trained on the identity set.

Built once per test session in a session temp folder; tests must not modify them.
"""

from __future__ import annotations

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
