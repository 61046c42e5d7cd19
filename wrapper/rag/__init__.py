"""Retrieval-augmented generation: index documents, search them, ground chat messages in the results.

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

Nothing here is imported by `lfwrap --help`; rjieba, bm25s, pypdf and html-to-markdown load on use.
"""

from wrapper.rag.chunking import Chunk, Hit
from wrapper.rag.grounding import ground_messages, query_from_messages
from wrapper.rag.retriever import Retriever

__all__ = ["Chunk", "Hit", "Retriever", "ground_messages", "query_from_messages"]
