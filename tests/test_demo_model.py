"""The tiny demo model: built locally, deterministic, loadable by transformers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wrapper.demo_model import build_demo_model

pytestmark = pytest.mark.local


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_bytes_twice(tiny_model: Path, tmp_path: Path) -> None:
    again = build_demo_model(tmp_path / "again")
    assert _digest(again) == _digest(tiny_model)
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= set(_digest(again))


def test_shape_and_tokenizer(tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert 300 <= len(tokenizer) <= 400 and config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    assert config.eos_token_id == tokenizer.eos_token_id
    text = "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode()), "BPE merges learned from the datasets shorten the text"


def test_cli_default_location(lfwrap, lfwrap_home: Path, tiny_model: Path) -> None:
    proc = lfwrap("demo-model", check=True)
    target = lfwrap_home / "models" / "tiny-llama"
    assert str(target) in proc.stdout
    assert _digest(target) == _digest(tiny_model), "another process builds the same bytes"
    help_text = lfwrap("demo-model", "--help", check=True).stdout
    assert "$ lfwrap demo-model --out" in help_text
