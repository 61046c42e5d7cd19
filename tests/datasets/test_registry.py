"""dataset_info.json: strict reading, rendering from the registry, user entries, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from wrapper import home
from wrapper.datasets.add import add_dataset, effective_columns, list_datasets
from wrapper.datasets.identity import fill_identity, write_identity
from wrapper.datasets.info import check_entries, read_dataset_info
from wrapper.datasets.registry import (
    RegistryEntry,
    check_name,
    dataset_files,
    prepare_dataset_dir,
    register,
    render_dataset_info,
)
from wrapper.errors import DatasetError, UsageError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets"
BUNDLED = ["identity", "alpaca_demo", "sharegpt_demo", "dpo_demo", "kto_demo"]


def test_hand_written_typos_are_rejected_with_did_you_mean_and_lines(tmp_path: Path):
    path = tmp_path / "dataset_info.json"
    shutil.copy(FIXTURES / "dataset_info_typo.json", path)
    with pytest.raises(DatasetError) as caught:
        read_dataset_info(path)
    assert str(caught.value).startswith(f"{path} has 5 problem(s)")
    assert [str(problem) for problem in caught.value.problems] == [
        f"{path}:4: error: dataset 'my_qa': unknown key 'format' (did you mean 'formatting'?)",
        f"{path}:7: error: dataset 'my_qa': unknown key 'promt' in 'columns' (did you mean 'prompt'?)",
        f"{path}:9: error: dataset 'my_qa': unknown key 'role' in 'tags' (did you mean 'role_tag'?)",
        f"{path}:10: error: dataset 'my_qa', key 'ranking': expected true or false, got \"false\"",
        f"{path}:12: error: dataset 'no_source': needs a source: one of file_name, hf_hub_url, ms_hub_url, "
        "om_hub_url, script_url, cloud_file_name",
    ]


def test_bad_formatting_and_syntax(tmp_path: Path):
    problems = check_entries({"x": {"file_name": "a.json", "formatting": "sharegtp"}})
    assert problems[0].message == ("dataset 'x', key 'formatting': 'sharegtp' is not a formatting; "
                                   "use one of alpaca, sharegpt, openai (did you mean 'sharegpt'?)")
    assert check_entries([1])[0].message.startswith("dataset_info.json must be a JSON object")
    path = tmp_path / "dataset_info.json"
    path.write_text('{\n  "x": {"file_name": "a.json",}\n}\n')
    with pytest.raises(DatasetError, match="is not valid JSON \\(line 2\\)"):
        read_dataset_info(path)


def test_prepare_renders_bundled_entries_by_absolute_path():
    folder = prepare_dataset_dir()
    assert folder == home.home() / "datasets"
    info = read_dataset_info(folder / "dataset_info.json")
    assert list(info) == BUNDLED
    for name in BUNDLED:
        assert Path(info[name]["file_name"]).is_absolute()
        assert Path(info[name]["file_name"]).is_file()
    assert info["dpo_demo"]["ranking"] is True
    assert info["kto_demo"]["columns"]["kto_tag"] == "kto_tag"
    assert info["sharegpt_demo"]["formatting"] == "sharegpt"
    bundled = home.bundled_datasets_dir()  # the checkout's datasets/, or the installed package's copy
    expected = [bundled / "identity.json", bundled / "kto_demo.json"]
    assert dataset_files(folder, ["identity", "kto_demo"]) == expected


def test_dataset_files_names_unknown_datasets():
    folder = prepare_dataset_dir()
    with pytest.raises(DatasetError, match="Dataset 'identty' is not in .*did you mean 'identity'"):
        dataset_files(folder, ["identty"])


def test_render_passes_every_value_through_json():
    entries = {'we"ird': {"file_name": 'a",\n"evil": "x.json', "formatting": "alpaca"}}
    text = render_dataset_info(entries)
    assert json.loads(text) == entries


def test_identity_fills_and_overrides_the_bundled_set():
    path = write_identity("神奇海螺", "蟹堡王")
    rows = json.loads(path.read_text(encoding="utf-8"))
    seed = next(row for row in rows if row["instruction"] == "请问你是谁")
    assert seed["output"] == "您好，我是蟹堡王的神奇海螺，很高兴为您服务！"
    assert not any("{{" in value for row in rows for value in row.values())
    info = read_dataset_info(home.user_datasets_dir() / "dataset_info.json")
    assert info["identity"]["file_name"] == "identity.json"  # relative to dataset_dir: the user's copy
    assert dataset_files(home.user_datasets_dir(), ["identity"]) == [path]
    assert [item.source for item in list_datasets() if item.name == "identity"] == ["user"]


@pytest.mark.parametrize("name", ['Bob", "output": "pwned', "back\\slash", "line\nbreak", "{{author}}",
                                  "</s><|im_end|>"])
def test_identity_values_cannot_break_json_or_add_fields(name: str):
    author = 'A "quoted" \\ author\n'
    path = write_identity(name, author)
    rows = json.loads(path.read_text(encoding="utf-8"))
    bundled = json.loads((ROOT / "datasets" / "identity.json").read_text(encoding="utf-8"))
    assert len(rows) == len(bundled)
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    seed = next(row for row in rows if row["instruction"] == "请问你是谁")
    assert seed["output"] == f"您好，我是{author}的{name}，很高兴为您服务！"  # one pass: no re-expansion


def test_identity_refuses_empty_values():
    with pytest.raises(UsageError, match="--name is empty"):
        fill_identity("  ", "x")


def test_hand_added_entries_are_kept_and_user_entries_win():
    folder = prepare_dataset_dir()
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["mine"] = {"hf_hub_url": "someone/data", "formatting": "alpaca"}
    info_path.write_text(json.dumps(info))
    (folder / "qa.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    register("alpaca_demo", RegistryEntry(file="qa.jsonl", rows=1))
    after = read_dataset_info(info_path)
    assert after["mine"] == {"hf_hub_url": "someone/data", "formatting": "alpaca"}
    assert after["alpaca_demo"]["file_name"] == "qa.jsonl"
    assert list(after)[:len(BUNDLED)] == BUNDLED
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []  # atomic write left nothing
    sources = {item.name: item.source for item in list_datasets()}
    assert sources["mine"] == "hand-added in dataset_info.json" and sources["alpaca_demo"] == "user"


def test_a_broken_home_dataset_info_is_reported_not_overwritten():
    folder = prepare_dataset_dir()
    info_path = folder / "dataset_info.json"
    info_path.write_text('{"mine": {"file_name": "a.json", "format": "alpaca"}}')
    with pytest.raises(DatasetError) as caught:
        prepare_dataset_dir()
    assert "did you mean 'formatting'" in str(caught.value.problems[0])
    assert "format" in info_path.read_text()


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 65, "a..b", "name with space"])
def test_unsafe_names_are_refused(name: str):
    with pytest.raises(UsageError, match="is not allowed"):
        check_name(name)


def test_add_copies_checks_and_registers_with_columns():
    columns = {"prompt": "question", "response": "answer"}
    added = add_dataset("qa", FIXTURES / "qa_custom.jsonl", columns=columns, description="custom columns")
    assert added.path == home.user_datasets_dir() / "qa.jsonl"
    assert added.path.read_bytes() == (FIXTURES / "qa_custom.jsonl").read_bytes()
    info = read_dataset_info(added.dataset_dir / "dataset_info.json")
    assert info["qa"] == {"file_name": "qa.jsonl", "formatting": "alpaca",
                          "columns": {"prompt": "question", "response": "answer"}}
    registry = yaml.safe_load((home.user_datasets_dir() / "registry.yaml").read_text())
    assert registry["qa"]["rows"] == 2 and registry["qa"]["description"] == "custom columns"


def test_add_refuses_a_bad_file_and_registers_nothing():
    with pytest.raises(DatasetError) as caught:
        add_dataset("bad", FIXTURES / "alpaca_bad.jsonl")
    assert "has 10 bad row(s) of 12" in str(caught.value)
    assert str(caught.value.problems[0]).endswith("row 2 (line 2): 'output' missing")
    assert not (home.user_datasets_dir() / "bad.jsonl").exists()
    assert not (home.user_datasets_dir() / "registry.yaml").exists()


def test_add_openai_writes_the_tags_llamafactory_needs():
    rows = [json.loads(line) for line in (FIXTURES / "openai_bad.jsonl").read_text().splitlines()][:2]
    source = home.home() / "chat.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    result = add_dataset("chat", source, formatting="openai")
    entry = read_dataset_info(result.dataset_dir / "dataset_info.json")["chat"]
    assert entry["formatting"] == "openai"
    assert entry["columns"] == {"messages": "messages"}
    assert entry["tags"]["role_tag"] == "role" and entry["tags"]["observation_tag"] == "tool"


def test_effective_columns_name_every_field_llamafactory_would_otherwise_drop():
    seen = {"instruction", "input", "output", "history", "system", "chosen", "rejected", "kto_tag"}
    assert effective_columns("alpaca", False, {}, seen) == {
        "prompt": "instruction", "query": "input", "response": "output", "history": "history",
        "system": "system", "kto_tag": "kto_tag"}
    ranked = effective_columns("alpaca", True, {}, seen)
    assert ranked["chosen"] == "chosen" and ranked["rejected"] == "rejected"


def test_re_adding_with_another_suffix_replaces_the_old_file(tmp_path: Path):
    columns = {"prompt": "question", "response": "answer"}
    first = add_dataset("qa", FIXTURES / "qa_custom.jsonl", columns=columns)
    as_json = tmp_path / "qa.json"
    as_json.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    second = add_dataset("qa", as_json)
    assert not first.path.exists() and second.path.name == "qa.json"
    assert read_dataset_info(second.dataset_dir / "dataset_info.json")["qa"]["file_name"] == "qa.json"
