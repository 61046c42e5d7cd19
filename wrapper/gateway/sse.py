"""Server-sent events from LLaMA-Factory, rewritten on the way through: the requested model name in
every chunk, the streamed text kept for the usage count, [DONE] held back until the usage chunk, and
`extra` fields (a rag route's sources) on the chunk that finishes a choice and on the usage chunk."""

from __future__ import annotations

import time
from typing import Any

import orjson


class StreamRewriter:
    """Rewrites complete SSE events: the requested model name, usage bookkeeping, [DONE] handling."""

    def __init__(self, model: str, include_usage: bool, extra: dict[str, Any] | None = None):
        self.model = model
        self.include_usage = include_usage
        self.extra = extra
        self.done = False
        self.chunks = 0
        self._parts: list[str] = []
        self._id: Any = None
        self._created: Any = None

    def text(self) -> str:
        return "".join(self._parts)

    def events(self, block: bytes) -> bytes:
        out = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            if not event.startswith(b"data:"):
                out.append(event + b"\n\n")  # comments (keep-alive pings) pass through
                continue
            payload = event[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                if not self.include_usage:  # else the usage chunk goes first, then [DONE]
                    out.append(b"data: [DONE]\n\n")
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(event + b"\n\n")
                continue
            if isinstance(chunk, dict):
                chunk["model"] = self.model
                self._id = chunk.get("id", self._id)
                self._created = chunk.get("created", self._created)
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                    if content:
                        self._parts.append(content)
                        self.chunks += 1
                    if self.extra and isinstance(choice, dict) and choice.get("finish_reason"):
                        chunk.update(self.extra)
                if self.include_usage:
                    chunk["usage"] = None
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created or int(time.time()),
            "model": self.model,
            "choices": [],
            "usage": usage,
            **(self.extra or {}),
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
