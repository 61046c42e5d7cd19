"""`lfwrap rag` through the real entry point: index, re-index, list, show, query, eval, remove, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_lfwrap

from wrapper.home import bundled_rag_docs_dir

DOCS = bundled_rag_docs_dir()


@pytest.mark.rag
def test_index_query_eval_list_show_remove(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "notes.docx").write_bytes(b"PK")
    out = run_lfwrap("rag", "index", "krusty", str(docs), check=True)
    assert "Indexed krusty: 5 added, 0 changed, 0 unchanged, 0 removed; 19 chunks" in out.stdout
    assert "skipped 1 unsupported file" in out.stderr

    (docs / "menu.md").write_text((docs / "menu.md").read_text() + "\nNew paragraph.\n", encoding="utf-8")
    out = run_lfwrap("rag", "index", "krusty", str(docs), check=True)
    assert "1 changed, 4 unchanged" in out.stdout and "changed: menu.md" in out.stdout

    out = run_lfwrap("rag", "query", "krusty", "蟹黄堡多少钱？", "-k", "2", check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1. ") and "菜单.md#1" in lines[0] and "2.99美元" in lines[1]
    out = run_lfwrap("rag", "query", "krusty", "Are Seafoam Soda refills free?", "--json", check=True)
    hits = json.loads(out.stdout)
    assert hits[0]["id"] == "menu.md#3" and "Refills are free." in hits[0]["text"] and hits[0]["score"] > 0

    out = run_lfwrap("rag", "eval", "krusty", str(DOCS.parent / "questions.jsonl"), "--json", check=True)
    figures = json.loads(out.stdout)
    assert figures["k"] == 4 and len(figures["questions"]) == 14 and figures["recall"] > 0.9
    out = run_lfwrap("rag", "eval", "krusty", str(DOCS.parent / "questions.jsonl"), check=True)
    assert "14 questions: recall@4 " in out.stdout.splitlines()[-1]

    listing = json.loads(run_lfwrap("rag", "list", "--json", check=True).stdout)
    assert [(r["name"], r["files"], r["chunks"]) for r in listing] == [("krusty", 5, 19)]
    out = run_lfwrap("rag", "show", "krusty", check=True)
    assert "krusty: 5 files, 19 chunks" in out.stdout and "staff.pdf  2 chunks" in out.stdout

    out = run_lfwrap("rag", "remove", "krusty", check=True)
    assert "Removed index krusty" in out.stdout
    assert "No indexes yet" in run_lfwrap("rag", "list", check=True).stdout


@pytest.mark.rag
def test_errors_are_one_sentence(tmp_path: Path) -> None:
    run_lfwrap("rag", "index", "krusty", str(DOCS), check=True)
    for args, expected, code in [  # 2: a usage error (a wrong command line)
        (("rag", "query", "krusy", "x"), "No retrieval index at", 1),
        (("rag", "show", "nope"), "create it with `lfwrap rag index nope PATH...`", 1),
        (("rag", "index", "bad/name", str(DOCS)), "is not a valid index name", 2),
        (("rag", "index", "x", str(tmp_path / "missing")), "does not exist", 1),
        (("rag", "eval", "krusty", str(DOCS / "menu.md")), "menu.md:1:", 1),
        (("rag", "remove", "nope"), "No retrieval index at", 1),
    ]:
        proc = run_lfwrap(*args)
        assert proc.returncode == code, args
        assert proc.stderr.startswith("Error: ") and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    manifest = json.loads(run_lfwrap("rag", "show", "krusty", "--json", check=True).stdout)
    assert manifest["chunk_size"] == 300 and set(manifest["files"]) >= {"menu.md", "staff.pdf"}


def test_help_ends_with_examples() -> None:
    for args in [("rag",), ("rag", "index"), ("rag", "query"), ("rag", "eval"), ("rag", "list")]:
        out = run_lfwrap(*args, "--help", check=True).stdout
        assert "$ lfwrap rag " in out.split("Examples:")[-1], args
    assert "rag" in run_lfwrap("--help", check=True).stdout
