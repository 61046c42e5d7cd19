"""Build the tiny demo Llama locally: no download, same bytes every time.

The model is a 2-layer Llama (hidden 64, 4 heads, 2 key/value heads) with random weights from a fixed
seed, and a byte-level BPE tokenizer (~340 tokens) trained with `tokenizers` on the bundled datasets.
It is far too small to know anything, but LoRA-trained on the identity set for a few seconds on a CPU
it answers the identity question exactly, which is what the demo and the end-to-end tests need.

torch, transformers and tokenizers are imported inside `build_demo_model` only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wrapper.errors import LaunchError
from wrapper.home import bundled_datasets_dir

SEED = 0
INIT_RANGE = 0.2
VOCAB_SIZE = 340
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2

# Always part of the tokenizer corpus, so the vocabulary does not hinge on which datasets are bundled:
# LLaMA-Factory's `default` chat template and the demo's question and answer.
BASE_CORPUS = [
    "Human: ",
    "\nAssistant:",
    "System: ",
    "请问你是谁",
    "您好，我是蟹堡王的神奇海螺，很高兴为您服务！",
    "Hello! I am an AI assistant. How can I help you today?",
]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _strings(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def corpus_texts(datasets_dir: Path | None = None) -> list[str]:
    """Every string in the bundled dataset files (sorted by path), after the fixed base corpus."""
    root = datasets_dir or bundled_datasets_dir()
    texts = list(BASE_CORPUS)
    if not root.is_dir():
        return texts
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".json", ".jsonl") or path.name == "dataset_info.json":
            continue
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            rows = json.loads(raw)
        texts.extend(_strings(rows))
    return texts


def _build_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )


def build_demo_model(out: Path) -> Path:
    """Write the tiny Llama and its tokenizer to `out` (replacing what is there) and return `out`."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        raise LaunchError(
            f"Building the demo model needs torch and transformers ({exc.name} is missing): "
            "install the local extra: pip install 'lfwrap[local]'."
        ) from exc

    tokenizer = _build_tokenizer(corpus_texts())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # LoRA leaves lm_head frozen; at the usual 0.02 its logits span ~2, so the answer becomes the
        # argmax at ~1% probability and the logged loss stays near 4.6. 0.2 lets the loss reach ~0.
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)

    out = Path(out).expanduser().resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for writing one small file is noise in the demo's output
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
