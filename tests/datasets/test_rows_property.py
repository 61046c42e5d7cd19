"""One rule set per formatting: the quick verdict, the full explanation and the row check agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wrapper.datasets.rows import entry_spec, make_spec, row_checker, rule_set

SPECS = [
    make_spec("alpaca"),
    make_spec("alpaca", ranking=True),
    make_spec("alpaca", columns={"kto_tag": "label"}),
    make_spec("alpaca", pt=True, columns={"prompt": "text"}),
    make_spec("sharegpt"),
    make_spec("sharegpt", ranking=True),
    make_spec("sharegpt", columns={"messages": "messages", "kto_tag": "label"}, tags={"role_tag": "role"}),
    make_spec("openai"),
    make_spec("openai", ranking=True),
    make_spec("sharegpt", columns={"images": "images"}, media_dir=Path("/nonexistent"), typo_fields=False),
    # registered entries, read as LLaMA-Factory reads them: only the mapped columns and tags
    entry_spec("alpaca"),
    entry_spec("alpaca", columns={"prompt": "instruction", "history": "history", "system": "system"}),
    entry_spec("alpaca", ranking=True, columns={"prompt": "instruction", "chosen": "chosen"}),
    entry_spec("alpaca", columns={"prompt": "instruction", "response": "output", "kto_tag": "label"}),
    entry_spec("alpaca", pt=True, columns={"query": "input"}),
    entry_spec("sharegpt"),
    entry_spec("sharegpt", ranking=True, columns={"messages": "conversations", "chosen": "chosen",
                                                   "rejected": "rejected"}),
    entry_spec("sharegpt", tags={"role_tag": "from", "content_tag": "value", "user_tag": "human"}),
    entry_spec("openai", columns={"messages": "messages", "system": "system"},
               tags={"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "observation_tag": "tool", "function_tag": "function"}),
    entry_spec("sharegpt", columns={}, tags={}),
]
ROLES = ["human", "gpt", "system", "observation", "function_call", "user", "assistant", "tool", "function",
         "x"]
KEYS = ["instruction", "input", "output", "history", "system", "chosen", "rejected", "kto_tag", "label",
        "text", "conversations", "messages", "outptu", "images"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4), st.sampled_from(ROLES))
message = st.dictionaries(
    st.sampled_from(["from", "value", "role", "content", "tool_calls"]),
    st.one_of(scalars, st.lists(scalars, max_size=2)),
    max_size=3,
)
values = st.one_of(
    scalars,
    st.lists(message, max_size=5),
    st.lists(st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=3), max_size=3),
    message,
)
rows = st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), scalars, st.lists(scalars))


@settings(max_examples=400, deadline=None)
@given(row=rows, index=st.integers(0, len(SPECS) - 1))
def test_quick_verdict_and_explanation_agree(row: Any, index: int) -> None:
    rules = rule_set(SPECS[index])
    explained = rules.explain(row)
    assert rules.ok(row) == (explained == [])
    result = rules.check(row)
    if explained:
        assert result == explained
        assert all(isinstance(message, str) and message for _, message in explained)
    else:
        chars, turns = result  # a row that passes every rule is one the statistics can read
        assert chars >= 0 and turns >= 1


def test_sharegpt_system_message_with_a_number_is_caught() -> None:
    check = row_checker("sharegpt")
    row = {"conversations": [{"from": "system", "value": 1}, {"from": "human", "value": "hi"},
                             {"from": "gpt", "value": "hello"}]}
    assert check(row) == [("conversations[0].value", "expected a string, got number 1")]
    row["conversations"][0]["value"] = "be brief"
    assert check(row) == (len("be brief") + 7, 1)
