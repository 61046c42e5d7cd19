"""The datasets folder is shared with the user: lfwrap never clobbers, never deletes what it did not copy,
never loses a registration to a concurrent writer, and refuses entry names that could leave a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wrapper.datasets.add import add_dataset, remove_dataset
from wrapper.datasets.registry import check_name, prepare_dataset_dir
from wrapper.errors import DatasetError, UsageError

ROOT = Path(__file__).resolve().parents[2]
ROW = '{"instruction": "q", "output": "a"}\n'


def _fail(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr


def _datasets(home: Path) -> Path:
    folder = home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _hand_added(home: Path, name: str = "hand", file_name: str = "hand.jsonl") -> Path:
    """A dataset added by hand: the user's own file and dataset_info.json entry."""
    folder = _datasets(home)
    (folder / file_name).write_text(ROW * 3, encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({name: {"file_name": file_name}}), encoding="utf-8")
    return folder / file_name


@pytest.mark.parametrize(
    "name", ["dataset_info", "registry", "Dataset_Info", "REGISTRY", "registry.v2", "dataset_info.old"]
)
def test_reserved_names_are_refused(name: str):
    with pytest.raises(UsageError, match="is reserved"):
        check_name(name)


def test_data_add_dataset_info_leaves_lfwrap_files_alone(lfwrap, lfwrap_home: Path, tmp_path: Path):
    _hand_added(lfwrap_home)
    info = lfwrap_home / "datasets" / "dataset_info.json"
    before = info.read_text(encoding="utf-8")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"instruction": "q", "output": "a"}]), encoding="utf-8")
    for name in ("dataset_info", "Registry"):
        _fail(lfwrap("data", "add", name, str(rows)), "is reserved")
    assert info.read_text(encoding="utf-8") == before
    assert not (lfwrap_home / "datasets" / "registry.yaml").exists()
    lfwrap("data", "list", check=True)  # still readable


def test_add_never_replaces_a_hand_added_entry_or_file(lfwrap, lfwrap_home: Path, tmp_path: Path):
    hand = _hand_added(lfwrap_home)
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "x", "output": "y"}\n', encoding="utf-8")
    # the same name as the hand-added entry
    _fail(lfwrap("data", "add", "hand", str(other)), "'hand' is an entry added by hand")
    # a new name whose file is already there, written by the user
    stray = hand.parent / "stray.jsonl"
    stray.write_text(ROW, encoding="utf-8")
    _fail(lfwrap("data", "add", "stray", str(other)), "was not written by lfwrap")
    # a new name whose file a hand-added entry uses (but no dataset of that name exists)
    info = json.loads((hand.parent / "dataset_info.json").read_text())
    info["alias"] = {"file_name": "target.jsonl"}
    (hand.parent / "dataset_info.json").write_text(json.dumps(info))
    _fail(lfwrap("data", "add", "target", str(other)), "is the file of the hand-added dataset 'alias'")
    assert hand.read_text() == ROW * 3 and stray.read_text() == ROW
    assert not (hand.parent / "target.jsonl").exists()

    # --force replaces; then the copy is lfwrap's, and `data remove` deletes it
    lfwrap("data", "add", "hand", str(other), "--force", check=True)
    assert hand.read_text() == other.read_text()
    lfwrap("data", "remove", "hand", check=True)
    assert not hand.exists()


def test_re_adding_lfwraps_own_copy_needs_no_force(tmp_path: Path):
    source = tmp_path / "qa.jsonl"
    source.write_text(ROW, encoding="utf-8")
    first = add_dataset("qa", source)
    source.write_text(ROW * 2, encoding="utf-8")
    again = add_dataset("qa", source)
    assert first.path == again.path and again.path.read_text() == ROW * 2


def test_remove_deletes_only_what_lfwrap_copied(lfwrap_home: Path):
    folder = _datasets(lfwrap_home)
    mine = folder / "mine.jsonl"
    mine.write_text(ROW, encoding="utf-8")
    added = add_dataset("mine", mine)  # registered in place: no copy was made
    assert added.path == mine.resolve()
    registry = yaml.safe_load((folder / "registry.yaml").read_text())
    assert registry["mine"]["copied"] is False
    removed = remove_dataset("mine")
    assert removed.deleted is None and removed.kept == mine.resolve()
    assert mine.read_text() == ROW


def test_remove_keeps_a_file_swapped_for_a_symlink(lfwrap_home: Path, tmp_path: Path):
    source = tmp_path / "qa.jsonl"
    source.write_text(ROW, encoding="utf-8")
    added = add_dataset("qa", source)
    precious = tmp_path / "precious.jsonl"
    precious.write_text(ROW, encoding="utf-8")
    added.path.unlink()
    added.path.symlink_to(precious)  # registry.yaml still names qa.jsonl
    remove_dataset("qa")
    assert precious.read_text() == ROW


_ADDER = """
import sys
from pathlib import Path
from wrapper.datasets.add import add_dataset
prefix, source, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for index in range(count):
    add_dataset(f"{prefix}{index}", source)
"""


def test_concurrent_adds_lose_no_registration(lfwrap_home: Path, tmp_path: Path):
    source = tmp_path / "qa.jsonl"
    source.write_text(ROW, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    count = 12
    procs = [
        subprocess.Popen([sys.executable, "-c", _ADDER, prefix, str(source), str(count)], env=env,
                         stderr=subprocess.PIPE, text=True)
        for prefix in ("a", "b", "c")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    expected = {f"{prefix}{index}" for prefix in "abc" for index in range(count)}
    registry = yaml.safe_load((lfwrap_home / "datasets" / "registry.yaml").read_text())
    assert set(registry) == expected
    info = json.loads((lfwrap_home / "datasets" / "dataset_info.json").read_text())
    assert expected <= set(info)


@pytest.mark.parametrize(
    "name",
    ["../../../escaped", "/abs", "a/b", "..", ".hidden", "x,y", "a\\b", "a..b", " x", "_x", "a\nb", ""],
)
def test_entry_names_in_a_hand_written_dataset_info_are_checked(lfwrap_home: Path, name: str):
    folder = _datasets(lfwrap_home)
    (folder / "dataset_info.json").write_text(json.dumps({name: {"file_name": "x.jsonl"}}), encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        prepare_dataset_dir()
    assert "is not allowed" in str(caught.value.problems[0])


def test_upstream_and_non_ascii_entry_names_are_accepted(lfwrap_home: Path):
    folder = _datasets(lfwrap_home)
    (folder / "rows.jsonl").write_text(ROW, encoding="utf-8")
    names = ["belle_0.5m", "alpaca-gpt4_de", "客服问答", "Données_v2"]
    info = {name: {"file_name": "rows.jsonl"} for name in names}
    (folder / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    prepare_dataset_dir()
    written = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(names) <= set(written)
