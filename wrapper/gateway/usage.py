"""Token counts for the usage chunk LLaMA-Factory does not send when streaming.

With the model's tokenizer.json (and the `tokenizers` package, installed with the `local` extra) the
counts are exact for the completion and close for the prompt (the chat template's own tokens are not
counted). Without it the counts are estimates: one token per streamed chunk, prompt bytes / 4; the
gateway says so once in its log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("lfwrap.gateway")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class TokenCounter:
    def __init__(self, model: str, tokenizer: Path | None):
        self.model = model
        self.path = tokenizer
        self._tokenizer: Any = None
        self._loaded = False
        self.exact = False

    def _load(self) -> None:
        self._loaded = True
        if self.path is None:
            log.warning(
                "model %s: no tokenizer configured; usage counts are estimates "
                "(set `tokenizer:` for exact counts)",
                self.model,
            )
            return
        path = self.path / "tokenizer.json" if self.path.is_dir() else self.path
        try:
            from tokenizers import Tokenizer  # the `local` extra installs it
        except ImportError:
            log.warning(
                "model %s: the `tokenizers` package is not installed; usage counts are estimates "
                "(pip install tokenizers)",
                self.model,
            )
            return
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a missing or unreadable file: estimate instead of failing requests
            log.warning("model %s: cannot load %s (%s); usage counts are estimates", self.model, path, exc)
            return
        self.exact = True

    def _count(self, text: str) -> int | None:
        if not self._loaded:
            self._load()
        if self._tokenizer is None:
            return None
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt_tokens(self, messages: list[Any]) -> int:
        text = "".join(_text_of(message.get("content")) for message in messages if isinstance(message, dict))
        counted = self._count(text)
        return counted if counted is not None else (len(text.encode()) + 3) // 4

    def completion_tokens(self, text: str, chunks: int) -> int:
        counted = self._count(text)
        return counted if counted is not None else chunks

    def usage(self, messages: list[Any], completion: str, chunks: int) -> dict[str, int]:
        prompt = self.prompt_tokens(messages)
        done = self.completion_tokens(completion, chunks)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
