"""ground_messages: one system message, first; context with ids; the token budget; sources."""

from __future__ import annotations

import copy

from wrapper.rag.chunking import Chunk, Hit
from wrapper.rag.grounding import BEGIN, END, ground_messages, query_from_messages


def hit(n: int, text: str, score: float = 1.0) -> Hit:
    return Hit(Chunk(f"doc.md#{n}", "doc.md", n, f"Doc › S{n}", text), score)


HITS = [hit(0, "The Krabby Patty costs $2.99.", 3.0), hit(1, "海带奶昔2美元。", 2.0)]


def test_adds_a_system_message_first_with_delimited_context_and_ids() -> None:
    messages = [{"role": "user", "content": "How much?"}]
    out, sources = ground_messages(messages, HITS, 1500)
    assert [m["role"] for m in out] == ["system", "user"]
    system = out[0]["content"]
    assert BEGIN in system and END in system and system.index(BEGIN) < system.index(END)
    assert "[doc.md#0] (Doc › S0)\nThe Krabby Patty costs $2.99." in system
    assert system.index("[doc.md#0]") < system.index("[doc.md#1]")
    assert [s["id"] for s in sources] == ["doc.md#0", "doc.md#1"]
    assert sources[0] == {
        "id": "doc.md#0",
        "source": "doc.md",
        "position": 0,
        "title": "Doc › S0",
        "score": 3.0,
    }
    assert all("text" not in s for s in sources)  # sources never carry the text (safe to log)
    assert messages == [{"role": "user", "content": "How much?"}]  # the input is not modified


def test_merges_into_the_existing_system_message_after_its_own_text() -> None:
    messages = [
        {"role": "system", "content": "You are the magic conch."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "How much?"},
    ]
    before = copy.deepcopy(messages)
    out, _ = ground_messages(messages, HITS, 1500)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert sum(m["role"] == "system" for m in out) == 1
    assert out[0]["content"].startswith("You are the magic conch.\n\n")
    assert "[doc.md#1]" in out[0]["content"] and out[1:] == messages[1:]
    assert messages == before


def test_system_message_with_content_parts_gets_a_text_part() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Persona."}]},
        {"role": "user", "content": "q"},
    ]
    out, sources = ground_messages(messages, HITS, 1500)
    parts = out[0]["content"]
    assert parts[0] == {"type": "text", "text": "Persona."} and BEGIN in parts[1]["text"]
    assert len(sources) == 2


def test_budget_keeps_the_best_passages_that_fit() -> None:
    long = hit(2, "kelp " * 400, 5.0)  # about 500 tokens
    out, sources = ground_messages([{"role": "user", "content": "q"}], [long, *HITS], 200)
    assert [s["id"] for s in sources] == ["doc.md#0", "doc.md#1"]  # the long one is skipped, not cut
    assert "[doc.md#2]" not in out[0]["content"]
    _, sources = ground_messages([{"role": "user", "content": "q"}], [long, *HITS], 2000)
    assert [s["id"] for s in sources] == ["doc.md#2", "doc.md#0", "doc.md#1"]


def test_nothing_to_add_leaves_the_messages_as_they_are() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    assert ground_messages(messages, [], 1500) == (messages, [])
    assert ground_messages(messages, HITS, 5) == (messages, [])  # nothing fits


def test_query_from_messages_takes_the_latest_user_turn_and_earlier_ones_as_history() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "I want Kelp Rings"},
        {"role": "assistant", "content": "Sure"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Price of"}, {"type": "text", "text": "the large?"}],
        },
    ]
    assert query_from_messages(messages) == ("Price of the large?", ["I want Kelp Rings"])
    assert query_from_messages([{"role": "system", "content": "S"}]) == ("", [])
