"""`lfwrap data ...` through the real CLI entry point (subprocess): output, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.home import bundled_datasets_dir

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets"


def assert_user_error(proc, fragment: str, code: int = 1) -> None:
    """A one-sentence error: exit 2 for a wrong command line (a usage error), 1 for bad data."""
    assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: ")
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("sub", [[], ["check"], ["add"], ["list"], ["identity"], ["remove"]])
def test_help_ends_with_examples(lfwrap, sub: list[str]):
    proc = lfwrap("data", *sub, "--help", check=True)
    last = [line.strip() for line in proc.stdout.splitlines() if line.strip()][-1]
    assert last.startswith("$ lfwrap data"), proc.stdout


def test_check_good_file_prints_summary_and_exits_0(lfwrap):
    proc = lfwrap("data", "check", str(ROOT / "datasets" / "sharegpt_demo.json"), "--formatting", "sharegpt",
                  check=True)
    summary = "sharegpt, 5 rows (0 bad), 8 turns, characters per row: mean 108.0, max 204"
    assert proc.stdout.strip().endswith(summary)


def test_check_bad_file_lists_rows_caps_and_exits_1(lfwrap):
    path = FIXTURES / "alpaca_bad.jsonl"
    proc = lfwrap("data", "check", str(path), "--max-errors", "2")
    assert_user_error(proc, f"{path} has 10 bad row(s) of 12; fix the rows listed above and check again.")
    assert proc.stdout.splitlines() == [
        "Assuming alpaca from the first rows; pass --formatting (and --columns) to override.",
        "row 2 (line 2): 'output' missing",
        "row 3 (line 3): 'instruction' expected a string, got number 42",
        "... and 8 more bad row(s)",
        f"{path}: alpaca, 12 rows (10 bad), 3 turns, characters per row: mean 16.5, max 21",
    ]


def test_check_options_are_validated(lfwrap):
    proc = lfwrap("data", "check", str(FIXTURES / "qa_custom.jsonl"), "--columns", "promt=question")
    assert_user_error(proc, "--columns: unknown name 'promt' (did you mean 'prompt'?)", code=2)
    proc = lfwrap("data", "check", str(FIXTURES / "qa_custom.jsonl"), "--columns", "prompt")
    assert_user_error(proc, "is not key=value", code=2)
    proc = lfwrap("data", "check", str(FIXTURES / "qa_custom.jsonl"), "--formatting", "csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'csv' is not one of" in proc.stderr


def test_check_dataset_info_json_reports_format_typo(lfwrap, tmp_path: Path):
    path = tmp_path / "dataset_info.json"
    path.write_text((FIXTURES / "dataset_info_typo.json").read_text())
    proc = lfwrap("data", "check", str(path))
    assert_user_error(proc, f"{path}:4: error: dataset 'my_qa': unknown key 'format' "
                            "(did you mean 'formatting'?)")


def test_hand_written_home_dataset_info_typo_stops_list(lfwrap, lfwrap_home: Path):
    folder = lfwrap_home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    text = '{\n  "mine": {\n    "file_name": "a.json",\n    "format": "alpaca"\n  }\n}\n'
    (folder / "dataset_info.json").write_text(text)
    proc = lfwrap("data", "list")
    assert_user_error(proc, f"{folder / 'dataset_info.json'}:4: error: dataset 'mine': unknown key 'format' "
                            "(did you mean 'formatting'?)")


def test_add_then_list(lfwrap, lfwrap_home: Path):
    proc = lfwrap("data", "add", "my_qa", str(FIXTURES / "qa_custom.jsonl"), "--columns",
                  "prompt=question,response=answer", check=True)
    assert f"Registered 'my_qa': 2 rows, copied to {lfwrap_home / 'datasets' / 'my_qa.jsonl'}" in proc.stdout
    listing = lfwrap("data", "list", check=True).stdout.splitlines()
    assert listing[0].split() == ["NAME", "SOURCE", "FORMATTING", "RANKING", "ROWS", "FILE"]
    rows = {line.split()[0]: line.split() for line in listing[1:-1]}
    assert rows["my_qa"] == ["my_qa", "user", "alpaca", "no", "2", "my_qa.jsonl"]
    assert rows["dpo_demo"][:5] == ["dpo_demo", "bundled", "alpaca", "yes", "6"]
    assert set(rows) == {"identity", "alpaca_demo", "sharegpt_demo", "dpo_demo", "kto_demo", "my_qa"}
    assert listing[-1] == f"dataset_dir: {lfwrap_home / 'datasets'}"


@pytest.mark.parametrize("name", ["../escape", "sub/dir", "..", "/abs"])
def test_add_refuses_names_that_escape(lfwrap, lfwrap_home: Path, name: str):
    proc = lfwrap("data", "add", name, str(FIXTURES / "qa_custom.jsonl"), "--columns",
                  "prompt=question,response=answer")
    assert_user_error(proc, "is not allowed", code=2)
    assert not (lfwrap_home / "escape.jsonl").exists()
    assert not (lfwrap_home / "datasets" / "registry.yaml").exists()


def test_add_refuses_bad_rows(lfwrap, lfwrap_home: Path):
    proc = lfwrap("data", "add", "prefs", str(FIXTURES / "dpo_bad.jsonl"), "--ranking")
    assert_user_error(proc, "has 2 bad row(s) of 3")
    assert "row 2 (line 2): 'rejected' missing" in proc.stderr
    assert not (lfwrap_home / "datasets" / "prefs.jsonl").exists()


def test_identity_command_writes_escaped_json(lfwrap, lfwrap_home: Path):
    name = 'Conch", "system": "injected'
    proc = lfwrap("data", "identity", "--name", name, "--author", "蟹堡王\\n", check=True)
    path = lfwrap_home / "datasets" / "identity.json"
    assert f"Wrote {path}" in proc.stdout
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    seed = next(row for row in rows if row["instruction"] == "请问你是谁")
    assert seed["output"] == f"您好，我是蟹堡王\\n的{name}，很高兴为您服务！"
    info = json.loads((lfwrap_home / "datasets" / "dataset_info.json").read_text())
    assert info["identity"]["file_name"] == "identity.json"


def _listed(lfwrap) -> dict[str, list[str]]:
    listing = lfwrap("data", "list", check=True).stdout.splitlines()
    return {line.split()[0]: line.split() for line in listing[1:-1]}


def test_remove_deletes_the_copy_and_the_entry(lfwrap, lfwrap_home: Path):
    folder = lfwrap_home / "datasets"
    lfwrap("data", "add", "my_qa", str(FIXTURES / "qa_custom.jsonl"), "--columns",
           "prompt=question,response=answer", check=True)
    lfwrap("data", "add", "kept", str(FIXTURES / "qa_custom.jsonl"), "--columns",
           "prompt=question,response=answer", check=True)
    proc = lfwrap("data", "remove", "my_qa", check=True)
    deleted = f"Deleted {folder / 'my_qa.jsonl'}"
    assert proc.stdout.splitlines() == ["Removed 'my_qa' from the registry.", deleted]
    assert not (folder / "my_qa.jsonl").exists()
    assert "my_qa" not in _listed(lfwrap) and "kept" in _listed(lfwrap)
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert "my_qa" not in info and info["kept"]["file_name"] == "kept.jsonl"
    assert "my_qa" not in (folder / "registry.yaml").read_text(encoding="utf-8")

    proc = lfwrap("data", "remove", "kept", "--keep-file", check=True)
    assert f"Kept {folder / 'kept.jsonl'}" in proc.stdout and (folder / "kept.jsonl").is_file()
    assert "kept" not in _listed(lfwrap)

    assert_user_error(lfwrap("data", "remove", "my_qa"), "No dataset 'my_qa' to remove")
    assert_user_error(lfwrap("data", "remove", "alpaca_demo"), "'alpaca_demo' is a bundled dataset", code=2)


def test_remove_brings_the_bundled_identity_back(lfwrap, lfwrap_home: Path):
    lfwrap("data", "identity", "--name", "Ada", "--author", "Example Labs", check=True)
    assert _listed(lfwrap)["identity"][1] == "user"
    proc = lfwrap("data", "remove", "identity", check=True)
    assert "The bundled 'identity' is used again." in proc.stdout
    assert _listed(lfwrap)["identity"][1] == "bundled"
    info = json.loads((lfwrap_home / "datasets" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["identity"]["file_name"] == str(bundled_datasets_dir() / "identity.json")


def test_remove_a_hand_added_entry_keeps_its_file(lfwrap, lfwrap_home: Path):
    folder = lfwrap_home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.json").write_text('[{"instruction": "q", "output": "a"}]', encoding="utf-8")
    (folder / "dataset_info.json").write_text('{"mine": {"file_name": "mine.json"}}', encoding="utf-8")
    assert _listed(lfwrap)["mine"][1] == "hand-added"
    assert_user_error(lfwrap("data", "remove", "mien"), "(did you mean 'mine'?)")
    proc = lfwrap("data", "remove", "mine", check=True)
    assert f"Kept {folder / 'mine.json'}" in proc.stdout and (folder / "mine.json").is_file()
    assert "mine" not in _listed(lfwrap)
