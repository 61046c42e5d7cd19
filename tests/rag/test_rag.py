"""Retrieval: the bundled mixed set, Chinese segmentation, incremental re-indexing, errors at open."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wrapper.errors import IndexBrokenError, IndexMissingError, RagError
from wrapper.home import bundled_rag_docs_dir
from wrapper.rag import indexer
from wrapper.rag.evaluate import Question, evaluate, load_questions
from wrapper.rag.indexer import index_paths
from wrapper.rag.retriever import Retriever
from wrapper.rag.store import LocalTarget, rag_dir

DOCS = bundled_rag_docs_dir()
QUESTIONS = DOCS.parent / "questions.jsonl"


def build(name: str, paths: list[Path], **kwargs) -> indexer.IndexReport:
    return index_paths(LocalTarget(rag_dir() / name), name, paths, **kwargs)


@pytest.fixture
def krusty() -> Retriever:
    build("krusty", [DOCS])
    return Retriever.open("krusty")


@pytest.mark.rag
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("蟹黄堡多少钱？", "菜单.md#1"),  # markdown, Chinese
        ("海带奶昔多少钱", "菜单.md#3"),
        ("蟹堡王在哪里？", "hours.html#2"),  # Chinese section of an HTML page
        ("可以用优惠券吗？", "faq.jsonl#2"),  # a JSONL row
        ("How much is a Krabby Patty?", "menu.md#1"),
        ("What time does the Krusty Krab open?", "hours.html#0"),
        ("Where is the secret formula kept?", "staff.pdf#1"),  # page 2 of the PDF
        ("Does the bun contain sesame?", "menu.md#4"),
    ],
)
def test_the_right_chunk_ranks_first(krusty: Retriever, question: str, expected: str) -> None:
    hits = krusty.search(question, top_k=3)
    assert hits[0].id == expected, [(h.id, h.score) for h in hits]
    assert hits == sorted(hits, key=lambda h: -h.score)


@pytest.mark.rag
def test_every_format_is_chunked_by_structure(krusty: Retriever) -> None:
    chunks = {c.id: c for c in krusty.store.chunks}  # type: ignore[attr-defined]
    assert {c.source for c in chunks.values()} == {
        "menu.md",
        "菜单.md",
        "hours.html",
        "staff.pdf",
        "faq.jsonl",
    }
    assert chunks["menu.md#3"].title == "Krusty Krab Menu › Drinks"
    assert chunks["hours.html#0"].title == "Visiting the Krusty Krab › Opening hours"
    assert "not indexed" not in " ".join(c.text for c in chunks.values())  # <script> is dropped
    assert chunks["staff.pdf#1"].title == "page 2"
    assert chunks["faq.jsonl#2"].title == "付款方式"
    assert all(c.id == f"{c.source}#{c.position}" for c in chunks.values())


@pytest.mark.rag
def test_a_unicode_tokenizer_misses_the_chinese_question() -> None:
    # \w+ keeps 蟹黄堡多少钱 as one token, which no sentence of the menu contains.
    build("plain", [DOCS], tokenizer="unicode")
    build("segmented", [DOCS])
    question = "蟹黄堡多少钱？"
    assert [h.id for h in Retriever.open("plain").search(question)][:1] != ["菜单.md#1"]
    assert Retriever.open("plain").search(question) == []
    assert Retriever.open("segmented").search(question)[0].id == "菜单.md#1"
    # English is unaffected by the choice
    assert Retriever.open("plain").search("How much is a Krabby Patty?")[0].id == "menu.md#1"


@pytest.mark.rag
def test_history_finds_what_the_latest_message_only_refers_to(krusty: Retriever) -> None:
    assert krusty.search("那个多少钱？") == []
    assert krusty.search("那个多少钱？", history=["我想喝海带奶昔"])[0].id == "菜单.md#3"
    assert krusty.search("Price of the large one?")[0].id != "menu.md#2"
    hits = krusty.search("Price of the large one?", history=["Hello", "I want Kelp Rings"])
    assert hits[0].id == "menu.md#2"
    # only the last HISTORY_TURNS earlier turns count
    older = ["I want Kelp Rings", "hello", "hi there"]
    assert krusty.search("Price of the large one?", history=older)[0].id != "menu.md#2"


@pytest.mark.rag
def test_top_k_and_min_score(krusty: Retriever) -> None:
    hits = krusty.search("Krabby Patty", top_k=10)
    assert 1 < len(hits) <= 10 and all(h.score > 0 for h in hits)
    cut = hits[0].score - 0.01
    assert [h.id for h in krusty.search("Krabby Patty", top_k=10, min_score=cut)] == [hits[0].id]
    assert krusty.search("zzzz qqqq") == []


def _chunks_by_source(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (rag_dir() / name / "chunks.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.setdefault(row["source"], []).append(line)
    return out


@pytest.mark.rag
def test_reindexing_reads_and_changes_only_the_edited_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    first = build("k", [docs])
    assert sorted(first.added) == sorted(["menu.md", "菜单.md", "hours.html", "staff.pdf", "faq.jsonl"])
    before = _chunks_by_source("k")

    unchanged = build("k", [docs])
    assert not unchanged.written and len(unchanged.unchanged) == 5

    menu = docs / "菜单.md"
    menu.write_text(menu.read_text(encoding="utf-8").replace("2.99美元", "3.49美元"), encoding="utf-8")
    loaded: list[str] = []
    real_load = indexer.load
    monkeypatch.setattr(indexer, "load", lambda f: loaded.append(f.source) or real_load(f))
    report = build("k", [docs])
    assert loaded == ["菜单.md"]
    assert report.changed == ["菜单.md"] and len(report.unchanged) == 4
    after = _chunks_by_source("k")
    assert {s for s in after if after[s] != before[s]} == {"菜单.md"}
    hit = Retriever.open("k").search("蟹黄堡多少钱")[0]
    assert hit.id == "菜单.md#1" and "3.49美元" in hit.chunk.text

    (docs / "faq.jsonl").unlink()
    report = build("k", [docs])
    assert report.removed == ["faq.jsonl"] and loaded == ["菜单.md"]
    assert "faq.jsonl" not in _chunks_by_source("k")

    report = build("k", [docs], chunk_size=64, overlap=8)  # new settings: every file again
    assert sorted(loaded[1:]) == sorted(["menu.md", "菜单.md", "hours.html", "staff.pdf"])


@pytest.mark.rag
def test_missing_index_is_an_error_at_open_with_a_hint() -> None:
    build("krusty", [DOCS])
    with pytest.raises(IndexMissingError, match=r"lfwrap rag index krusy PATH.*Did you mean 'krusty'"):
        Retriever.open("krusy")


@pytest.mark.rag
@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "manifest.json").write_text("{not json", encoding="utf-8"),
        lambda f: (f / "manifest.json").write_text(
            '{"format": 1, "name": "x", "extra": 1}', encoding="utf-8"
        ),
        lambda f: shutil.rmtree(f / "bm25"),
        lambda f: (f / "chunks.jsonl").write_text("", encoding="utf-8"),
        lambda f: (f / "chunks.jsonl").write_text("[1, 2]\n", encoding="utf-8"),
        lambda f: (f / "bm25" / "vocab.index.json").write_text("garbage", encoding="utf-8"),
    ],
    ids=["manifest-not-json", "manifest-wrong-keys", "no-bm25", "no-chunks", "bad-chunk-row", "bad-vocab"],
)
def test_broken_index_is_an_error_at_open(damage) -> None:
    build("krusty", [DOCS])
    damage(rag_dir() / "krusty")
    with pytest.raises(IndexBrokenError, match="krusty"):
        Retriever.open("krusty")
    # indexing again repairs it
    build("krusty", [DOCS])
    assert Retriever.open("krusty").search("Krabby Patty")


@pytest.mark.rag
def test_eval_figures(krusty: Retriever) -> None:
    result = evaluate(krusty, load_questions(QUESTIONS), k=4)
    assert len(result.rows) == 14
    assert result.recall > 0.9 and result.mrr > 0.9
    by_question = {r.question: r for r in result.rows}
    assert by_question["蟹黄堡多少钱？"].first_rank == 1

    # the arithmetic on hand-checkable cases: first relevant at rank 1, rank 2, and nowhere
    questions = [
        Question(question="Krabby Patty price", sources=["menu.md#1"]),
        Question(
            question="Krabby Patty price", sources=[by_question["How much is a Krabby Patty?"].top_ids[1]]
        ),
        Question(question="Krabby Patty price", sources=["no-such.md", "menu.md"]),
        Question(question="qqqq", sources=["menu.md"]),
    ]
    result = evaluate(krusty, questions, k=4)
    ranks = [r.first_rank for r in result.rows]
    assert ranks[0] == 1 and ranks[3] is None
    assert result.recall == pytest.approx((1 + (ranks[1] is not None) + 0.5 + 0) / 4)
    assert result.mrr == pytest.approx((1 + (1 / ranks[1] if ranks[1] else 0) + 1 / ranks[2] + 0) / 4)


def test_questions_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "a", "sources": ["x"]}\n{"question": "b", "source": ["x"]}\n', encoding="utf-8"
    )
    with pytest.raises(RagError, match=r"q.jsonl:2: source"):
        load_questions(path)


@pytest.mark.rag
def test_index_errors_are_sentences(tmp_path: Path) -> None:
    with pytest.raises(RagError, match="does not exist"):
        build("x", [tmp_path / "nope"])
    (tmp_path / "a.docx").write_bytes(b"PK")
    with pytest.raises(RagError, match="No supported documents"):
        build("x", [tmp_path])
    with pytest.raises(RagError, match="not a supported document"):
        build("x", [tmp_path / "a.docx"])
    with pytest.raises(RagError, match="overlap"):
        build("x", [DOCS], chunk_size=50, overlap=50)
    assert build("small", [DOCS], chunk_size=20).chunks > 19  # the default overlap shrinks to fit (5)
    assert Retriever.open("small").manifest.overlap == 5
