r"""Retrieval-augmented generation: index documents, search them, ground chat messages in the results.

    loaders      files -> text parts (.txt .md .html .pdf .jsonl)
    chunking     parts -> chunks by headings and paragraphs, to a size budget with overlap
    tokenize     Chinese-aware search terms (jieba-rs), token estimates
    lexical      BM25 matrices (bm25s)
    store        the embedded index folder under $LFWRAP_HOME/rag/NAME
    pgstore      the same index in PostgreSQL, for an index shared by several machines
    indexer      (re-)index paths into either store, only files whose checksum changed
    retriever    Retriever.open(name).search(query, history, top_k, min_score) -> hits
    grounding    ground_messages(messages, hits, max_context_tokens) -> messages, sources
    evaluate     recall@k and MRR on a questions file
    route        RagRoute (a model route's `rag:` settings) and RouteRetriever.ground(messages), per request
    dense        optional: vectors from a local embedding model folder
    fusion       reciprocal rank fusion of BM25 and dense rankings

Choices, measured by bench/bench_rag.py on 100k synthetic mixed Chinese/English chunks (29.8 MB), on
2 cores shared with other work (two runs; the second under a load average of 4.5):
    segmentation   rjieba (jieba-rs) 6.5 / 3.2 MB/s on that corpus (~35 MB/s on real menu text) vs the
                   jieba package 0.20 / 0.23 MB/s, same tokens. A \w+ split finds the sources of 0 of 6
                   Chinese questions in the top 4 (recall@4 0.00) where segmentation finds 0.92.
    BM25           query p50 / p99: bm25s 0.74 / 5.2 ms (0.79 / 9.2); the same scoring on scipy.sparse
                   1.1 / 20.7 ms (0.91 / 9.5); rank_bm25 132 / 273 ms (163 / 512), 178-208x slower.
                   Build: bm25s 5.7 s (14.7), scipy 4.1 s (3.7), rank_bm25 6.2 s (3.8), segmentation
                   (6.7 s, 10.4) on top. bm25s: the fastest queries, and a kept library with save/load.
    whole path     `lfwrap rag index` 2.1 / 0.9 MB/s (100k chunks in 15 / 34 s, segmentation-bound),
                   open 1.1 / 1.5 s, Retriever.search p50 0.71 / 0.80 ms, p99 5.1 / 9.3 ms
                   (goal: p50 <= 20 ms).
    HTML to text   html-to-markdown 9.5 / 4.6 MB/s and keeps headings; inscriptis 1.4 / 0.7 MB/s (headings
                   lost); html2text 0.8 / 0.4 MB/s (keeps headings, GPL).
    PDF            pypdf, the maintained pure-Python reader.

Nothing here is imported by `lfwrap --help`; rjieba, bm25s, pypdf and html-to-markdown load on use.
"""

from wrapper.rag.chunking import Chunk, Hit
from wrapper.rag.grounding import ground_messages, query_from_messages
from wrapper.rag.retriever import Retriever
from wrapper.rag.route import Grounded, RagRoute, RouteRetriever

__all__ = [
    "Chunk",
    "Grounded",
    "Hit",
    "RagRoute",
    "Retriever",
    "RouteRetriever",
    "ground_messages",
    "query_from_messages",
]
