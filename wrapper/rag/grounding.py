"""Put retrieved chunks into OpenAI-style chat messages, and find what to search for in them.

Pure functions: no I/O, the input list is never modified. LLaMA-Factory's API server accepts one system
message and only as the first message, so the context is merged into an existing first system message
(after its own text, which keeps the model's persona first) or added as a new first message.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from wrapper.rag.chunking import Hit
from wrapper.rag.tokenize import estimate_tokens

BEGIN = "<<<CONTEXT"
END = "CONTEXT>>>"
INSTRUCTION = (
    "Answer with the help of the context below when it is relevant. Each passage starts with its "
    "source id in square brackets; cite the ids you use. If the context does not contain the answer, "
    "say so rather than guessing."
)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def query_from_messages(messages: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The latest user message, and the earlier user messages (oldest first) as history."""
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    return (users[-1], users[:-1]) if users else ("", [])


def context_block(hits: Sequence[Hit], max_context_tokens: int) -> tuple[str, list[Hit]]:
    """The delimited context and the hits that fit in `max_context_tokens` (best first)."""
    passages: list[str] = []
    used_hits: list[Hit] = []
    used = estimate_tokens(INSTRUCTION + BEGIN + END)
    for hit in hits:
        title = f" ({hit.chunk.title})" if hit.chunk.title else ""
        passage = f"[{hit.id}]{title}\n{hit.chunk.text}"
        cost = estimate_tokens(passage) + 1
        if used + cost > max_context_tokens:
            continue  # a smaller, lower-ranked passage may still fit
        passages.append(passage)
        used_hits.append(hit)
        used += cost
    if not passages:
        return "", []
    return f"{INSTRUCTION}\n{BEGIN}\n" + "\n\n".join(passages) + f"\n{END}", used_hits


def ground_messages(
    messages: Sequence[dict[str, Any]], hits: Sequence[Hit], max_context_tokens: int = 1500
) -> tuple[list[dict[str, Any]], list[dict[str, object]]]:
    """`messages` with the hits that fit as context in the first (system) message, and their sources.

    With no hit that fits, the messages come back unchanged (a copy) and the source list is empty.
    """
    out = copy.deepcopy(list(messages))
    block, used = context_block(hits, max_context_tokens)
    if not block:
        return out, []
    if out and out[0].get("role") == "system":
        content = out[0].get("content")
        if isinstance(content, list):
            out[0]["content"] = [*content, {"type": "text", "text": "\n\n" + block}]
        else:
            existing = _text(content)
            out[0]["content"] = f"{existing}\n\n{block}" if existing else block
    else:
        out.insert(0, {"role": "system", "content": block})
    return out, [hit.source_entry() for hit in used]
