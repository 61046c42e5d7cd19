"""A registered dataset is checked through exactly the columns and tags its dataset_info entry maps, the way
LLaMA-Factory 0.9.5's DatasetAttr.join reads an entry: fields it leaves unmapped are never read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.datasets.check import check_file
from wrapper.datasets.verify import spec_for_entry

ALPACA_ROW = {
    "instruction": "hi",
    "input": "",
    "output": "hello",
    "system": 5,
    "history": "not a list",
    "kto_tag": "yes",
    "tools": 3,
}
SHAREGPT_ROW = {
    "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
    "system": 5,
    "kto_tag": "maybe",
}
# entry -> the findings LLaMA-Factory's reading implies for the row (empty: accepted)
CASES = [
    ({"file_name": "d.json"}, ALPACA_ROW, []),  # system, history, kto_tag unmapped: ignored
    (
        {
            "file_name": "d.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        },
        ALPACA_ROW,
        [("system", "expected a string, got number 5")],
    ),
    (
        {
            "file_name": "d.json",
            "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"},
        },
        ALPACA_ROW,
        [("kto_tag", 'expected true or false, got string "yes"')],
    ),
    ({"file_name": "d.json", "formatting": "sharegpt"}, SHAREGPT_ROW, []),
    (
        {
            "file_name": "d.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        },
        SHAREGPT_ROW,
        [("system", "expected a string, got number 5")],
    ),
    # openai formatting has no tag defaults of its own in LLaMA-Factory: from/value unless `tags` says so
    (
        {
            "file_name": "d.json",
            "formatting": "openai",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        },
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            "kto_tag": 1,
        },
        [],
    ),
]


@pytest.mark.parametrize(("entry", "row", "expected"), CASES)
def test_only_mapped_columns_are_checked(entry: dict, row: dict, expected: list, tmp_path: Path) -> None:
    spec = spec_for_entry(entry, stage="sft", media_dir=None)
    from wrapper.datasets.rows import rule_set

    assert rule_set(spec).explain(row) == expected


def test_an_entry_leaving_out_a_needed_column_or_tag_is_named(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps([SHAREGPT_ROW]))
    entry = {"file_name": "d.json", "formatting": "sharegpt", "tags": {"role_tag": "from"}}
    report = check_file(data, spec=spec_for_entry(entry, stage="sft", media_dir=None))
    assert [problem.message for problem in report.problems] == [
        "the dataset_info entry maps no `content_tag` in its `tags`, so LLaMA-Factory finds no "
        'content_tag in any row; add "content_tag": "value" (its field name) to the entry\'s `tags`'
    ]
    ranking = {"file_name": "d.json", "ranking": True, "columns": {"prompt": "instruction"}}
    explained = spec_for_entry(ranking, stage="dpo", media_dir=None)
    from wrapper.datasets.rows import rule_set

    fields = [message.split("`")[1] for _, message in rule_set(explained).explain({"instruction": "q"})]
    assert fields == ["chosen", "rejected"]


@pytest.mark.e2e
def test_llamafactory_converts_what_we_accept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ground truth: LLaMA-Factory's own parser + converter on each accepted case gives a usable example."""
    pytest.importorskip("llamafactory")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    from datasets import Dataset

    accepted = [(entry, row) for entry, row, expected in CASES if not expected]
    info = {f"d{index}": entry for index, (entry, _) in enumerate(accepted)}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    attrs = get_dataset_list(list(info), str(tmp_path))
    for attr, (_, row) in zip(attrs, accepted, strict=True):
        example = Dataset.from_list([row])[0]
        converter = get_dataset_converter(attr.formatting, attr, DataArguments(dataset_dir=str(tmp_path)))
        out = converter(example)
        assert len(out["_prompt"]) % 2 == 1 and len(out["_response"]) == 1, (attr, out)
