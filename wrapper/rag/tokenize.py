"""Text to search terms: Chinese word segmentation for BM25, and a token-count estimate.

`jieba` (the default) segments with jieba-rs (the `rjieba` binding, jieba's dictionary and algorithm)
in search mode, which also emits the shorter words inside long ones (招牌菜 -> 招牌, 招牌菜). It reads
mixed Chinese/English text; Latin words are lower-cased. Measured by bench/bench_rag.py on this machine:
rjieba segments at ~35-40 MB/s, the pure-Python jieba package at ~1.2 MB/s with identical tokens.

`unicode` splits on \\w+ runs, as a whitespace/unicode tokenizer does: a run of Chinese characters is
one token, so a Chinese question shares no term with the sentence that answers it. It is kept only to
measure that failure (tests and bench), never as a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

TOKENIZERS = ("jieba", "unicode")


def _jieba(text: str) -> list[str]:
    import rjieba  # imported here: `lfwrap --help` must not load it

    return [tok.lower() for tok in rjieba.cut_for_search(text) if _WORD.search(tok)]


def _unicode(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    if name == "jieba":
        return _jieba
    if name == "unicode":
        return _unicode
    raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")


def estimate_tokens(text: str) -> int:
    """Roughly what a model's tokenizer counts: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    other = len(text) - cjk - text.count(" ")
    return cjk + (other + 3) // 4
