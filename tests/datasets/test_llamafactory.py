"""Our dataset_info.json and data files, read by LLaMA-Factory's own parser, loader and converters.

The rendered dataset_info.json must parse with llamafactory.data.parser.get_dataset_list, every
row of every bundled or added dataset must convert to a non-empty prompt and response, and rows
`lfwrap data check` rejects for role order or turn count are the ones LLaMA-Factory drops.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.datasets.add import add_dataset
from wrapper.datasets.check import check_file
from wrapper.datasets.identity import write_identity

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets"

pytestmark = pytest.mark.e2e


@pytest.fixture
def llamafactory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pytest.importorskip("llamafactory")
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    from datasets import load_dataset

    def convert(dataset_dir: Path, names: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        data_args = DataArguments(dataset_dir=str(dataset_dir), media_dir=str(dataset_dir))
        for name, attr in zip(names, get_dataset_list(names, str(dataset_dir)), strict=True):
            assert attr.load_from == "file"
            path = dataset_dir / attr.dataset_name  # absolute: replaces dataset_dir, as in LLaMA-Factory
            cache = str(tmp_path / "cache")
            rows = load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
            converter = get_dataset_converter(attr.formatting, attr, data_args)
            out[name] = [converter(row) for row in rows]
        return out

    return convert


def test_bundled_and_added_datasets_convert_in_llamafactory(llamafactory, lfwrap_home: Path):
    write_identity("神奇海螺", "蟹堡王")
    sharegpt = lfwrap_home / "chats.json"
    sharegpt.write_bytes((ROOT / "datasets" / "sharegpt_demo.json").read_bytes())
    add_dataset("chats", sharegpt, formatting="sharegpt")
    openai_rows = [json.loads(line) for line in (FIXTURES / "openai_bad.jsonl").read_text().splitlines()][:2]
    openai = lfwrap_home / "tools.jsonl"
    openai.write_text("".join(json.dumps(row) + "\n" for row in openai_rows))
    add_dataset("tools", openai, formatting="openai")
    add_dataset("qa", FIXTURES / "qa_custom.jsonl", columns={"prompt": "question", "response": "answer"})
    add_dataset("prefs", ROOT / "datasets" / "dpo_demo.json", ranking=True)

    names = ["identity", "alpaca_demo", "sharegpt_demo", "dpo_demo", "kto_demo"]
    names += ["chats", "tools", "qa", "prefs"]
    by_name = llamafactory(lfwrap_home / "datasets", names)
    assert list(by_name) == names
    for name, rows in by_name.items():
        assert rows, name
        for row in rows:
            assert row["_prompt"] and row["_response"], (name, row)
            assert all(turn["content"] for turn in row["_prompt"]), (name, row)
    seed = next(row for row in by_name["identity"] if row["_prompt"][0]["content"] == "请问你是谁")
    assert seed["_response"][0]["content"] == "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"
    assert any(len(row["_prompt"]) == 5 for row in by_name["alpaca_demo"])  # history is read, not dropped
    assert all(row["_system"] for row in by_name["sharegpt_demo"][:4])  # the system column is read
    pairs = by_name["dpo_demo"] + by_name["prefs"]
    assert all(len(row["_response"]) == 2 for row in pairs)  # chosen, rejected
    kto = by_name["kto_demo"]
    assert all(len(row["_response"]) == 2 for row in kto)  # desirable / undesirable pairs with an empty side
    assert by_name["tools"][1]["_prompt"][-1]["role"] == "observation"  # two tool results merged into one
    assert by_name["qa"][0]["_prompt"][0]["content"] == "What is LoRA?"


def test_rows_we_reject_are_the_ones_llamafactory_drops(llamafactory, lfwrap_home: Path):
    rows = json.loads((FIXTURES / "sharegpt_bad.json").read_text())
    kept = [rows[index] for index in (0, 1, 2, 3, 7)]  # good, wrong order, unknown role, odd count, good
    path = lfwrap_home / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    report = check_file(path, formatting="sharegpt")
    ours = sorted({problem.row for problem in report.problems})
    info_dir = lfwrap_home / "datasets"
    info_dir.mkdir(parents=True, exist_ok=True)
    columns = {"messages": "conversations", "system": "system"}
    entry = {"file_name": str(path), "formatting": "sharegpt", "columns": columns}
    (info_dir / "dataset_info.json").write_text(json.dumps({"mixed": entry}))
    converted = llamafactory(info_dir, ["mixed"])["mixed"]
    dropped = [number for number, row in enumerate(converted, 1) if not (row["_prompt"] or row["_response"])]
    assert ours == dropped == [2, 3, 4]
