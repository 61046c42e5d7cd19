"""Retrieval libraries measured on 100k chunks: segmentation, BM25 index build and query latency.

Generates a synthetic mixed Chinese/English corpus (Zipf-distributed words, ~60 tokens a chunk) and, in
the same run:
  - segmentation MB/s: rjieba (jieba-rs, used) vs the jieba package (on a sample) vs a \\w+ split;
  - BM25 build (MB/s of chunk text, segmentation included) and query p50/p99 for bm25s (used),
    a scipy.sparse implementation of the same eager scoring, and rank_bm25 (on a few queries: it rescans
    every chunk per query term in Python);
  - the whole embedded path: `lfwrap rag` indexing of the corpus written as .md files, and
    Retriever.search latency on it (goal: p50 <= 20 ms);
  - HTML to text: html-to-markdown (used) vs inscriptis / html2text when installed;
  - what a \\w+ tokenizer costs Chinese questions: recall@4 on the bundled question set.
The last line is a one-line summary. Default run: about a minute or two on 2 shared cores.

    python bench/bench_rag.py [--chunks 100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_P50_MS = 20.0


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n chunks and a word list, words drawn from a Zipf law over CJK and Latin pseudo-words."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 600)]
    zh = ["".join(rng.choices(chars, k=rng.choice((1, 2, 2, 3)))) for _ in range(20000)]
    en = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20000)]
    words = [w for pair in zip(zh, en, strict=True) for w in pair]
    cum_weights = list(itertools.accumulate(1 / (i + 1) ** 1.05 for i in range(len(words))))
    chunks = []
    for _ in range(n):
        picked = rng.choices(words, cum_weights=cum_weights, k=40)
        # Chinese words run together (no spaces), as in real text; Latin words are spaced.
        chunks.append("".join(w if w[0] >= "\u4e00" else f" {w} " for w in picked).strip())
    return chunks, words


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000


class ScipyBM25:
    """The same eager Lucene BM25 as bm25s, written directly on scipy.sparse (the home-made option)."""

    def __init__(self, docs: list[list[str]], k1: float = 1.5, b: float = 0.75):
        from scipy import sparse

        vocab: dict[str, int] = {}
        rows, cols = [], []
        for d, doc in enumerate(docs):
            for tok in doc:
                rows.append(d)
                cols.append(vocab.setdefault(tok, len(vocab)))
        tf = sparse.csc_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(docs), len(vocab)))
        tf.sum_duplicates()
        dl = np.asarray([len(d) for d in docs], np.float32)
        df = np.diff(tf.indptr)
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = k1 * (1 - b + b * dl / dl.mean())
        data = tf.data / (tf.data + norm[tf.indices])
        tf.data = data * np.repeat(idf, df)
        self.matrix, self.vocab = tf, vocab

    def scores(self, tokens: list[str]) -> np.ndarray:
        ids = [self.vocab[t] for t in tokens if t in self.vocab]
        return np.asarray(self.matrix[:, ids].sum(axis=1)).ravel()


def bench_segmentation(chunks: list[str]) -> dict[str, float]:
    from wrapper.rag.tokenize import get_tokenizer

    text = "\n".join(chunks[:20000])
    mb = len(text.encode()) / 1e6
    rates = {}
    for name in ("jieba", "unicode"):
        _, s = timed(get_tokenizer(name), text)
        rates["rjieba" if name == "jieba" else "\\w+ split"] = mb / s
    try:
        import jieba

        jieba.setLogLevel(60)
        jieba.initialize()
        sample = text[: len(text) // 10]
        _, s = timed(jieba.lcut_for_search, sample)
        rates["jieba (pure Python)"] = len(sample.encode()) / 1e6 / s
    except ImportError:
        pass
    for name, rate in rates.items():
        print(f"segmentation {name:<22} {rate:8.2f} MB/s")
    return rates


def bench_bm25(chunks: list[str], queries: list[str]) -> dict[str, tuple[float, float, float]]:
    from wrapper.rag.lexical import LexicalIndex, top_k
    from wrapper.rag.tokenize import get_tokenizer

    tokenize = get_tokenizer("jieba")
    mb = sum(len(c.encode()) for c in chunks) / 1e6
    docs, seg_s = timed(lambda: [tokenize(c) for c in chunks])
    qtoks = [tokenize(q) for q in queries]
    results = {}

    def run(name, build, score, n_queries):
        index, build_s = timed(build)
        lat = []
        for toks in qtoks[:n_queries]:
            start = time.perf_counter()
            top_k(score(index, toks), 4, 0.0)
            lat.append(time.perf_counter() - start)
        results[name] = (mb / (seg_s + build_s), pct(lat, 0.5), pct(lat, 0.99))
        print(
            f"bm25 {name:<12} build {build_s:6.2f} s ({results[name][0]:5.2f} MB/s with segmentation)  "
            f"query p50 {results[name][1]:7.2f} ms  p99 {results[name][2]:7.2f} ms  ({len(lat)} queries)"
        )

    run("bm25s", lambda: LexicalIndex.build(docs), lambda ix, t: ix.scores(t), len(qtoks))
    run("scipy", lambda: ScipyBM25(docs), lambda ix, t: ix.scores(t), len(qtoks))
    try:
        from rank_bm25 import BM25Okapi

        run("rank_bm25", lambda: BM25Okapi(docs), lambda ix, t: np.asarray(ix.get_scores(t)), 10)
    except ImportError:
        print("bm25 rank_bm25: not installed (pip install rank-bm25 to compare)")
    print(f"(segmenting the {len(chunks)} chunks took {seg_s:.2f} s of each build)")
    return results


def bench_pipeline(chunks: list[str], queries: list[str], root: Path) -> tuple[float, float, float]:
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.retriever import Retriever
    from wrapper.rag.store import LocalTarget

    docs = root / "docs"
    docs.mkdir()
    per_file = 1000
    for i in range(0, len(chunks), per_file):
        body = "\n\n".join(f"## Section {j}\n\n{c}" for j, c in enumerate(chunks[i : i + per_file]))
        (docs / f"doc{i // per_file:04d}.md").write_text(body, encoding="utf-8")
    mb = sum(f.stat().st_size for f in docs.iterdir()) / 1e6
    report, index_s = timed(index_paths, LocalTarget(root / "index"), "bench", [docs])
    retriever, open_s = timed(Retriever.open, root / "index")
    lat = []
    for q in queries:
        start = time.perf_counter()
        retriever.search(q, top_k=4)
        lat.append(time.perf_counter() - start)
    p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
    print(
        f"lfwrap rag index: {report.chunks} chunks, {mb:.1f} MB in {index_s:.2f} s = "
        f"{mb / index_s:.2f} MB/s; "
        f"open {open_s:.2f} s; Retriever.search p50 {p50:.2f} ms p99 {p99:.2f} ms ({len(lat)} queries)"
    )
    return mb / index_s, p50, p99


def bench_html() -> None:
    section = (
        "<h2>Burgers 汉堡</h2><p>The <b>Krabby Patty</b> costs $2.99. 蟹黄堡售价 2.99 美元。</p>"
        "<ul><li>Double</li><li>Triple</li></ul><table><tr><td>Fries</td><td>$1.00</td></tr></table>"
    )
    html = f"<html><head><script>x()</script></head><body><h1>Menu</h1>{section * 3000}</body></html>"
    mb = len(html.encode()) / 1e6
    import html_to_markdown

    options = html_to_markdown.ConversionOptions(extract_metadata=False, skip_images=True)
    converters = {"html-to-markdown": lambda h: html_to_markdown.convert(h, options).content}
    try:
        import inscriptis

        converters["inscriptis"] = inscriptis.get_text
    except ImportError:
        pass
    try:
        import html2text

        converters["html2text (GPL)"] = html2text.html2text
    except ImportError:
        pass
    for name, fn in converters.items():
        out, s = timed(fn, html)
        keeps = "keeps headings" if "## Burgers" in out else "headings lost"
        print(f"html {name:<18} {mb / s:6.2f} MB/s  ({keeps})")


def bench_tokenizer_recall(root: Path) -> tuple[float, float]:
    from wrapper.home import bundled_rag_docs_dir
    from wrapper.rag.evaluate import evaluate, load_questions
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.retriever import Retriever
    from wrapper.rag.store import LocalTarget

    docs = bundled_rag_docs_dir()
    questions = [q for q in load_questions(docs.parent / "questions.jsonl") if not q.question.isascii()]
    recalls = []
    for tokenizer in ("unicode", "jieba"):
        folder = root / f"krusty-{tokenizer}"
        index_paths(LocalTarget(folder), "krusty", [docs], tokenizer=tokenizer)
        result = evaluate(Retriever.open(folder), questions, k=4)
        recalls.append(result.recall)
        print(f"{len(questions)} Chinese questions, {tokenizer:>7} tokenizer: recall@4 {result.recall:.2f}")
    return recalls[0], recalls[1]


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they come
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    chunks, words = corpus(args.chunks)
    rng = random.Random(1)
    queries = [" ".join(rng.choices(words[:5000], k=rng.randint(2, 6))) for _ in range(args.queries)]
    print(
        f"corpus: {len(chunks)} chunks, {sum(len(c.encode()) for c in chunks) / 1e6:.1f} MB, "
        f"cores {os.cpu_count()}"
    )
    seg = bench_segmentation(chunks)
    bm25 = bench_bm25(chunks, queries)
    with tempfile.TemporaryDirectory(prefix="bench_rag_") as tmp:
        rate, p50, p99 = bench_pipeline(chunks, queries, Path(tmp))
        bench_html()
        plain, segmented = bench_tokenizer_recall(Path(tmp))
    verdict = "met" if p50 <= GOAL_P50_MS else "NOT met"
    ratio = bm25["rank_bm25"][1] / bm25["bm25s"][1] if "rank_bm25" in bm25 else float("nan")
    print(
        f"summary: {len(chunks)} chunks: index {rate:.2f} MB/s, query p50 {p50:.2f} ms p99 {p99:.2f} ms "
        f"(goal p50 <= {GOAL_P50_MS:.0f} ms {verdict}); bm25s vs scipy p50 {bm25['bm25s'][1]:.2f}/"
        f"{bm25['scipy'][1]:.2f} ms, rank_bm25 {ratio:.0f}x slower; rjieba {seg['rjieba']:.0f} MB/s; "
        f"Chinese recall@4 unicode {plain:.2f} vs jieba {segmented:.2f}"
    )


if __name__ == "__main__":
    main()
