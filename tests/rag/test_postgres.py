"""The PostgreSQL store on a real server that this test starts in a temp folder (unix socket only).

Skipped, with the reason, where the PostgreSQL server binaries (Debian: apt-get install postgresql) or
psycopg are missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrapper.errors import IndexBrokenError, IndexMissingError
from wrapper.home import bundled_rag_docs_dir
from wrapper.rag.indexer import index_paths
from wrapper.rag.retriever import Retriever
from wrapper.rag.store import LocalTarget, rag_dir

DOCS = bundled_rag_docs_dir()
pytestmark = pytest.mark.rag


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    return Path(found[-1]).parent if found[-1] else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'lfwrap[rag]')")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    # initdb refuses to run as root: run the server as the postgres user, in a folder it can reach.
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="lfwrap-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        if (
            shutil.which("runuser") is None
            or subprocess.run(["id", "postgres"], capture_output=True).returncode
        ):
            pytest.skip("running as root without a postgres user to run the server as")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sock = base / "data", base
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "lfwrap",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-k {sock} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        yield f"host={sock} dbname=postgres user=lfwrap"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_same_ranking_as_the_embedded_store(postgres: str) -> None:
    from wrapper.rag.pgstore import PostgresStore

    report = index_paths(PostgresStore(postgres, "krusty"), "krusty", [DOCS])
    assert report.chunks == 19 and report.written
    index_paths(LocalTarget(rag_dir() / "krusty"), "krusty", [DOCS])
    remote, local = Retriever.open("krusty", postgres=postgres), Retriever.open("krusty")
    for question in [
        "蟹黄堡多少钱？",
        "How much is a Krabby Patty?",
        "蟹堡王在哪里？",
        "Who works the register?",
        "Krabby Patty",
    ]:
        r, lo = remote.search(question, top_k=5), local.search(question, top_k=5)
        assert [h.id for h in r] == [h.id for h in lo], question
        assert [h.score for h in r] == pytest.approx([h.score for h in lo], rel=1e-4)
        assert r[0].chunk == lo[0].chunk
    history = remote.search("Price of the large one?", history=["I want Kelp Rings"])
    assert history[0].id == "menu.md#2"
    assert remote.search("zzzz") == []


def test_reindex_touches_only_the_changed_file(postgres: str, tmp_path: Path) -> None:
    import psycopg

    from wrapper.rag.pgstore import PostgresStore

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    store = PostgresStore(postgres, "edits")
    index_paths(store, "edits", [docs])

    def rows() -> dict[str, list[tuple]]:
        with psycopg.connect(postgres) as conn:
            out: dict[str, list[tuple]] = {}
            for row in conn.execute(
                "SELECT source, id, text, xmin::text FROM lfwrap_rag_chunks WHERE name = 'edits' ORDER BY id"
            ):
                out.setdefault(row[0], []).append(row[1:])
            return out

    before = rows()
    assert not index_paths(store, "edits", [docs]).written
    menu = docs / "menu.md"
    menu.write_text(menu.read_text(encoding="utf-8").replace("$2.99", "$3.49"), encoding="utf-8")
    (docs / "faq.jsonl").unlink()
    report = index_paths(store, "edits", [docs])
    assert report.changed == ["menu.md"] and report.removed == ["faq.jsonl"]
    after = rows()
    assert set(after) == set(before) - {"faq.jsonl"}
    # rows of untouched files are the very same rows (same transaction id), menu.md's are new
    assert {s for s in after if after[s] != before[s]} == {"menu.md"}
    hit = Retriever.open("edits", postgres=postgres).search("Krabby Patty price")[0]
    assert hit.id == "menu.md#1" and "$3.49" in hit.chunk.text
    # another index in the same tables is unaffected
    assert Retriever.open("krusty", postgres=postgres).manifest.chunk_count == 19


def test_errors_at_open(postgres: str) -> None:
    import psycopg

    from wrapper.rag.pgstore import PostgresStore

    with pytest.raises(IndexMissingError, match="No retrieval index 'nope' in PostgreSQL"):
        Retriever.open("nope", postgres=postgres)
    index_paths(PostgresStore(postgres, "broken"), "broken", [DOCS])
    with psycopg.connect(postgres) as conn:
        conn.execute("DELETE FROM lfwrap_rag_chunks WHERE name = 'broken' AND source = 'menu.md'")
    with pytest.raises(IndexBrokenError, match="re-index"):
        Retriever.open("broken", postgres=postgres)
    with pytest.raises(IndexMissingError, match="Cannot connect to PostgreSQL") as err:
        Retriever.open("krusty", postgres="host=/nonexistent-socket-dir dbname=x user=u password=s3cret")
    assert "s3cret" not in str(err.value)


def test_cli_with_postgres(postgres: str) -> None:
    from conftest import run_lfwrap

    out = run_lfwrap("rag", "index", "cli", str(DOCS), "--postgres", postgres, check=True)
    assert "Indexed cli: 5 added" in out.stdout and "(PostgreSQL)" in out.stdout
    env = {"LFWRAP_RAG_POSTGRES": postgres}
    out = run_lfwrap("rag", "query", "cli", "蟹黄堡多少钱？", "--json", env=env, check=True)
    assert json.loads(out.stdout)[0]["id"] == "菜单.md#1"
    out = run_lfwrap("rag", "eval", "cli", str(DOCS.parent / "questions.jsonl"), env=env, check=True)
    assert "14 questions: recall@4" in out.stdout
    assert not (rag_dir() / "cli").exists()  # nothing embedded was written
    out = run_lfwrap("rag", "remove", "cli", env=env, check=True)
    assert "Removed index cli from PostgreSQL" in out.stdout
    proc = run_lfwrap("rag", "query", "cli", "x", env=env)
    assert proc.returncode == 1 and "No retrieval index 'cli' in PostgreSQL" in proc.stderr
