"""Row checks of `lfwrap data check`: every rule, with row and line numbers, on fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.datasets import check as check_module
from wrapper.datasets.check import check_file, format_report
from wrapper.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets"


def lines(report, max_errors: int = 20) -> list[str]:
    return format_report(report, max_errors)


def test_alpaca_jsonl_every_rule():
    report = check_file(FIXTURES / "alpaca_bad.jsonl")
    assert [str(problem) for problem in report.problems] == [
        "row 2 (line 2): 'output' missing",
        "row 3 (line 3): 'instruction' expected a string, got number 42",
        "row 4 (line 4): 'input' expected a string, got array [\"a\"]",
        "row 5 (line 6): 'instruction' empty (and no 'input'): the prompt would be empty",
        "row 6 (line 7): 'output' empty",
        "row 7 (line 8): 'output' missing",
        "row 7 (line 8): 'ouput' unknown field (did you mean 'output'?)",
        "row 8 (line 9): 'history[0]' expected a [question, answer] pair of strings, "
        "got array [\"only one\"]",
        "row 9 (line 10): a row must be a JSON object, got array [\"not\", \"an\", \"object\"]",
        "row 10 (line 11): not valid JSON: unexpected end of data",
        "row 11 (line 12): 'kto_tag' expected true or false, got string \"yes\"",
    ]
    # the blank line 5 is not a row; rows 1 and 12 are good (12 has history, system and an extra "id")
    assert (report.rows, report.bad_rows, report.turns) == (12, 10, 3)
    assert report.max_chars == len("good with history") + len("y") + len("q") + len("a") + len("s")
    assert not report.ok


def test_json_array_rows_report_the_line_each_row_starts_on():
    report = check_file(FIXTURES / "alpaca_bad.json")
    text = (FIXTURES / "alpaca_bad.json").read_text().splitlines()
    assert [str(problem) for problem in report.problems] == [
        "row 2 (line 6): 'output' missing",
        "row 4 (line 14): 'system' expected a string, got number 3",
    ]
    assert text[5].strip() == "{" and '"no output"' in text[6]
    assert text[13].strip() == "{" and '"wrong system"' in text[14]
    assert report.rows == 4


def test_sharegpt_roles_counts_and_fields():
    report = check_file(FIXTURES / "sharegpt_bad.json", formatting="sharegpt")
    got = [str(problem) for problem in report.problems]
    assert got == [
        "row 2 (line 3): 'conversations[0].from' 'gpt' out of order: turn 1 must be 'human' or 'observation' "
        "(roles alternate after an optional first 'system')",
        "row 3 (line 4): 'conversations[0].from' unknown role string \"humman\"; expected one of human, gpt, "
        "observation, function_call, system (did you mean 'human'?)",
        "row 4 (line 5): 'conversations' 1 turn(s): it must end with an answer from 'gpt' "
        "(an even count after any system prompt)",
        "row 5 (line 6): 'conversations[1]' missing 'value'",
        "row 6 (line 7): 'conversations' expected a non-empty list of messages, got array []",
        "row 7 (line 8): 'conversations' missing (the row has 'messages': try --columns messages=messages "
        "or another --formatting)",
    ]
    # rows 1 (system first) and 8 (function call + observation) are good: 1 + 2 turns
    assert (report.rows, report.bad_rows, report.turns) == (8, 6, 3)


def test_openai_tool_calls_merge_and_roles_alternate():
    report = check_file(FIXTURES / "openai_bad.jsonl", formatting="openai")
    assert [str(problem) for problem in report.problems] == [
        "row 3 (line 3): 'messages[1].role' 'user' out of order: turn 2 must be 'assistant' or 'function' "
        "(roles alternate after an optional first 'system')",
        "row 4 (line 4): 'messages[1].role' unknown role string \"assistent\"; expected one of user, "
        "assistant, tool, function, system (did you mean 'assistant'?)",
        "row 5 (line 5): 'messages[1].content' expected a string, got null",
    ]
    assert report.bad_rows == 3 and report.rows == 5


def test_alpaca_ranking_needs_chosen_and_rejected():
    report = check_file(FIXTURES / "dpo_bad.jsonl", ranking=True)
    assert [str(problem) for problem in report.problems] == [
        "row 2 (line 2): 'rejected' missing",
        "row 3 (line 3): 'chosen' missing (with --ranking, 'chosen' and 'rejected' replace 'output')",
        "row 3 (line 3): 'rejected' missing (with --ranking, 'chosen' and 'rejected' replace 'output')",
    ]


def test_sharegpt_ranking_needs_odd_turns_and_answer_objects():
    report = check_file(FIXTURES / "sharegpt_ranking_bad.jsonl", formatting="sharegpt", ranking=True)
    assert [str(problem) for problem in report.problems] == [
        "row 2 (line 2): 'conversations' 2 turn(s): a preference row must end with a 'human' turn, answered "
        "by 'chosen' and 'rejected'",
        "row 3 (line 3): 'rejected' expected an object with 'from': 'gpt' and a string 'value', "
        "got string \"bad\"",
    ]


def test_custom_columns_are_used_for_the_checks():
    path = FIXTURES / "qa_custom.jsonl"
    assert check_file(path, columns={"prompt": "question", "response": "answer"}).ok
    plain = check_file(path)
    assert plain.bad_rows == 2
    assert str(plain.problems[0]) == "row 1 (line 1): 'instruction' missing"


def test_broken_row_in_a_json_array_is_reported_and_checking_goes_on():
    report = check_file(FIXTURES / "broken_array.json")
    assert report.fatal is None and not report.ok
    assert (report.rows, report.bad_rows) == (3, 1)
    assert [str(problem) for problem in report.problems] == [
        "row 2 (line 3): not valid JSON (line 3: Expecting ',' delimiter); checked on from the next row"
    ]


PRETTY_ROWS = [
    {"instruction": "one", "output": "a", "history": [["q", "a"], ["q2", "a2"]]},
    {"instruction": "two", "output": "b"},
    {"instruction": "three", "output": "c", "history": [["q", "a"]]},
    {"instruction": "four", "output": "d"},
    {"instruction": "five"},
]


@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
def test_pretty_printed_array_resyncs_after_each_broken_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            chunk: int):
    text = json.dumps(PRETTY_ROWS, indent=2, ensure_ascii=False)
    text = text.replace('"q2"', "q2", 1)  # row 1: an unquoted string inside a nested list
    text = text.replace('"b"\n  },', '"b"\n  }', 1)  # rows 2 and 3: the comma between them dropped
    text = text.replace('"instruction": "four"', '"instruction": "four" "x"', 1)  # row 4: a stray string
    path = tmp_path / "pretty.json"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(check_module, "CHUNK", chunk)
    report = check_file(path)
    assert report.fatal is None
    assert (report.rows, report.bad_rows) == (5, 4)
    assert [str(problem) for problem in report.problems] == [  # lines checked by eye on the file
        "row 1 (line 2): not valid JSON (line 11: Expecting value); checked on from the next row",
        "row 3 (line 20): missing ',' between this row and the one before",
        "row 4 (line 30): not valid JSON (line 31: Expecting ',' delimiter); checked on from the next row",
        "row 5 (line 34): 'output' missing",
    ]


def test_a_broken_row_on_a_single_line_array_stops_there(tmp_path: Path):
    path = tmp_path / "compact.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": x}, {"instruction": "c"}]')
    report = check_file(path)
    assert report.fatal == "line 1: not valid JSON after row 1: Expecting value"
    assert lines(report)[0] == "stopped: line 1: not valid JSON after row 1: Expecting value"
    assert report.rows == 1


def test_cap_lists_the_first_rows_and_counts_the_rest(tmp_path: Path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}"}) + "\n" for i in range(50)))
    report = check_file(path, max_errors=3)
    out = lines(report, 3)
    assert out[:4] == [
        "row 1 (line 1): 'output' missing",
        "row 2 (line 2): 'output' missing",
        "row 3 (line 3): 'output' missing",
        "... and 47 more bad row(s)",
    ]
    assert report.bad_rows == 50
    assert out[-1].endswith("50 rows (50 bad), 0 turns, characters per row: mean 0.0, max 0")


def test_summary_counts_rows_turns_and_characters(tmp_path: Path):
    path = tmp_path / "ok.jsonl"
    rows = [{"instruction": "ab", "output": "cde"},
            {"instruction": "你好", "input": "x", "output": "世界", "history": [["q", "a"], ["qq", "aa"]]}]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    report = check_file(path)
    assert report.ok
    assert (report.rows, report.turns, report.chars, report.max_chars) == (2, 4, 5 + 11, 11)
    assert report.summary() == "2 rows (0 bad), 4 turns, characters per row: mean 8.0, max 11"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_json_array_streams_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     chunk: int):
    rows = [{"instruction": "中文 ü \\ \" 😀", "output": "x" * (i % 5 + 1)} for i in range(12)]
    body = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    text = "\ufeff[\n" + body + ",\n12345, true\n]\n"  # a BOM, and numbers a chunk edge could cut
    path = tmp_path / "rows.json"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(check_module, "CHUNK", chunk)
    report = check_file(path)
    assert report.rows == 14 and report.bad_rows == 2 and report.fatal is None
    assert [str(problem) for problem in report.problems] == [
        "row 13 (line 14): a row must be a JSON object, got number 12345",
        "row 14 (line 14): a row must be a JSON object, got true",
    ]
    assert report.chars == sum(len(row["instruction"]) + len(row["output"]) for row in rows)


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path: Path):
    path = tmp_path / "lines.json"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    report = check_file(path)
    assert report.rows == 2 and [str(p) for p in report.problems] == ["row 2 (line 2): 'output' missing"]


def test_missing_file_and_wrong_suffix_are_clear_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist; check the path"):
        check_file(tmp_path / "nope.jsonl")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DatasetError, match="not a .json or .jsonl file"):
        check_file(csv)


@pytest.mark.parametrize(("formatting", "ranking", "name"), [
    ("alpaca", False, "identity.json"), ("alpaca", False, "alpaca_demo.json"),
    ("sharegpt", False, "sharegpt_demo.json"), ("alpaca", True, "dpo_demo.json"),
    ("alpaca", False, "kto_demo.json"),
])
def test_bundled_datasets_pass(formatting: str, ranking: bool, name: str):
    report = check_file(ROOT / "datasets" / name, formatting=formatting, ranking=ranking)
    assert report.ok, format_report(report, 20)
    assert report.rows >= 5


def test_bundled_identity_set_shape():
    rows = json.loads((ROOT / "datasets" / "identity.json").read_text(encoding="utf-8"))
    assert len(rows) >= 20
    instructions = [row["instruction"] for row in rows]
    assert len(set(instructions)) == len(instructions)  # one answer per question
    seed = {"instruction": "请问你是谁", "input": "",
            "output": "您好，我是{{author}}的{{name}}，很高兴为您服务！"}
    assert seed in rows
    assert any(row["instruction"].isascii() for row in rows)  # English rows too
    assert all("{{name}}" in row["output"] or "{{author}}" in row["output"] for row in rows)
