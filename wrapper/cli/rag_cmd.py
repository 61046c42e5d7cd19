"""`lfwrap rag`: index documents, search them, and measure retrieval on known questions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

_HELP = """Index documents for retrieval-augmented answers, search them, evaluate the search.

An index lives under $LFWRAP_HOME/rag/NAME. Documents: .txt .md .html .pdf .jsonl (one document per
row: {"text": ..., "id": ..., "title": ...}). Chunks follow headings and paragraphs and have stable ids
<file>#<position>. Search is BM25 with Chinese word segmentation (jieba-rs); nothing is downloaded.
The bundled example set (the fictional Krusty Krab's menu, in English and Chinese) is at
rag_docs/krusty-krab in a source checkout."""


_POSTGRES = click.option(
    "--postgres",
    "postgres",
    envvar="LFWRAP_RAG_POSTGRES",
    default=None,
    metavar="DSN",
    help="Use the index of this name in PostgreSQL (libpq DSN or URL; env LFWRAP_RAG_POSTGRES).",
)


_TOP_K = click.option(
    "-k",
    "--top-k",
    "top_k",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Chunks to retrieve.",
)


@click.group(
    help=_HELP,
    epilog="""\b
Examples:
  $ lfwrap rag index krusty rag_docs/krusty-krab
  $ lfwrap rag query krusty "蟹黄堡多少钱？"
  $ lfwrap rag query krusty "Are Seafoam Soda refills free?" -k 2
  $ lfwrap rag eval krusty rag_docs/questions.jsonl
  $ lfwrap rag list
""",
)
def rag() -> None:
    pass


@rag.command(
    help="""Index the documents under PATH (files or folders) as NAME, or bring NAME up to date.

Indexing again reads only the files whose checksum changed (or all of them if the chunk settings
changed); files no longer under the PATHs leave the index. Sizes are in estimated tokens (one per CJK
character, one per four other characters); defaults: 300 and an overlap of 40, or NAME's own.""",
    epilog="""\b
Examples:
  $ lfwrap rag index krusty rag_docs/krusty-krab
  $ lfwrap rag index handbook docs/ faq.jsonl --chunk-size 500 --overlap 50
  $ lfwrap rag index krusty rag_docs/krusty-krab      # again: only edited files are read
  $ lfwrap rag index krusty rag_docs/krusty-krab --postgres "host=db dbname=rag user=lfwrap"
  $ lfwrap rag index krusty rag_docs/krusty-krab --embedding-model ~/models/all-MiniLM-L6-v2
""",
)
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--chunk-size", type=click.IntRange(min=16), default=None, help="Chunk budget in tokens.")
@click.option("--overlap", type=click.IntRange(min=0), default=None, help="Tokens repeated between chunks.")
@click.option(
    "--embedding-model",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A local sentence-transformers model folder: adds dense retrieval, fused with BM25 "
    "(needs lfwrap[rag-dense]; nothing is downloaded).",
)
@_POSTGRES
def index(
    name: str,
    paths: tuple[Path, ...],
    chunk_size: int | None,
    overlap: int | None,
    embedding_model: Path | None,
    postgres: str | None,
) -> None:
    from wrapper.rag.indexer import Target, index_paths
    from wrapper.rag.store import LocalTarget, check_name, rag_dir

    target: Target
    if postgres:
        from wrapper.rag.pgstore import PostgresStore

        target, folder = PostgresStore(postgres, name), "PostgreSQL"
    else:
        target = LocalTarget(rag_dir() / check_name(name))
        folder = str(rag_dir() / name)
    report = index_paths(target, name, list(paths), chunk_size, overlap, embedding_model=embedding_model)
    counts = (
        f"{len(report.added)} added, {len(report.changed)} changed, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed"
    )
    verb = "Indexed" if report.written else "Nothing changed in"
    click.echo(f"{verb} {name}: {counts}; {report.chunks} chunks in {report.seconds:.2f} s ({folder}).")
    for label, sources in (("changed", report.changed), ("added", report.added), ("removed", report.removed)):
        for source in sources:
            click.echo(f"  {label}: {source}")
    if report.skipped:
        click.echo(f"  skipped {len(report.skipped)} unsupported file(s), e.g. {report.skipped[0]}", err=True)


@rag.command(
    name="list",
    help="""List the indexes under $LFWRAP_HOME/rag: files, chunks, settings, last update.""",
    epilog="""\b
Examples:
  $ lfwrap rag list
  $ lfwrap rag list --json
""",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(as_json: bool) -> None:
    from wrapper.errors import IndexBrokenError
    from wrapper.rag.store import index_names, rag_dir, read_manifest

    rows: list[dict[str, Any]] = []
    for name in index_names():
        try:
            m = read_manifest(rag_dir() / name)
        except IndexBrokenError:
            rows.append({"name": name, "broken": True})
            continue
        if m is not None:
            rows.append(
                {
                    "name": name,
                    "files": len(m.files),
                    "chunks": m.chunk_count,
                    "chunk_size": m.chunk_size,
                    "overlap": m.overlap,
                    "tokenizer": m.tokenizer,
                    "updated": m.updated,
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No indexes yet: create one with `lfwrap rag index NAME PATH...`.")
        return
    click.echo(f"{'NAME':<24} {'FILES':>6} {'CHUNKS':>7} {'SIZE/OVERLAP':>13}  UPDATED")
    for r in rows:
        if r.get("broken"):
            click.echo(f"{r['name']:<24} {'damaged: re-index it':>28}")
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"]))
        sizes = f"{r['chunk_size']}/{r['overlap']}"
        click.echo(f"{r['name']:<24} {r['files']:>6} {r['chunks']:>7} {sizes:>13}  {when}")


@rag.command(
    help="""Show an index: its settings and every file with its checksum and chunk count.""",
    epilog="""\b
Examples:
  $ lfwrap rag show krusty
  $ lfwrap rag show krusty --json
""",
)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def show(name: str, as_json: bool) -> None:
    from wrapper.rag.store import LocalStore

    store = LocalStore.open(name)  # also checks that the index opens
    m = store.manifest
    if as_json:
        click.echo(m.model_dump_json(indent=2))
        return
    click.echo(f"{name}: {len(m.files)} files, {m.chunk_count} chunks at {store.folder}")
    click.echo(f"  chunk size {m.chunk_size}, overlap {m.overlap}, tokenizer {m.tokenizer}")
    click.echo(f"  embedding model: {m.embedding_model or 'none (BM25 only)'}")
    click.echo(f"  indexed from: {', '.join(m.roots)}")
    for source, f in m.files.items():
        click.echo(f"  {source}  {f.chunks} chunks  {f.size} bytes  sha256 {f.sha256[:12]}")


@rag.command(
    help="""Delete an index (its folder under $LFWRAP_HOME/rag); the documents are not touched.""",
    epilog="""\b
Examples:
  $ lfwrap rag remove krusty
""",
)
@click.argument("name")
@_POSTGRES
def remove(name: str, postgres: str | None) -> None:
    if postgres:
        from wrapper.rag.pgstore import PostgresStore

        PostgresStore.open(postgres, name).remove()
        click.echo(f"Removed index {name} from PostgreSQL.")
        return
    from wrapper.rag.store import remove as remove_index

    folder = remove_index(name)
    click.echo(f"Removed index {name} ({folder}).")


@rag.command(
    help="""Search an index: the best chunks for QUESTION with their scores (BM25) and sources.""",
    epilog="""\b
Examples:
  $ lfwrap rag query krusty "蟹黄堡多少钱？"
  $ lfwrap rag query krusty "Who is the cashier?" -k 2 --json
""",
)
@click.argument("name")
@click.argument("question")
@_TOP_K
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Drop chunks scoring less.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits (with their text) as JSON.")
@_POSTGRES
def query(
    name: str, question: str, top_k: int, min_score: float, as_json: bool, postgres: str | None
) -> None:
    from wrapper.rag.retriever import Retriever

    hits = Retriever.open(name, postgres=postgres).search(question, top_k=top_k, min_score=min_score)
    if as_json:
        rows = [{**h.source_entry(), "text": h.chunk.text} for h in hits]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo(f"No chunk of {name} shares a term with this question.")
        return
    for rank, hit in enumerate(hits, start=1):
        title = f"  ({hit.chunk.title})" if hit.chunk.title else ""
        click.echo(f"{rank}. {hit.score:.3f}  {hit.id}{title}")
        text = " ".join(hit.chunk.text.split())
        click.echo(f"   {text[:300]}{'…' if len(text) > 300 else ''}")


@rag.command(
    name="eval",
    help="""Measure an index on questions with known sources: recall@k and MRR.

Each line of QUESTIONS is {"question": "...", "sources": [...]}, a source being a chunk id
("menu.md#1") or a file ("menu.md", any of its chunks counts).""",
    epilog="""\b
Examples:
  $ lfwrap rag eval krusty rag_docs/questions.jsonl
  $ lfwrap rag eval krusty my_questions.jsonl -k 8 --json
""",
)
@click.argument("name")
@click.argument("questions", type=click.Path(path_type=Path, dir_okay=False))
@_TOP_K
@click.option("--json", "as_json", is_flag=True, help="Print the figures and each question's result as JSON.")
@_POSTGRES
def eval_(name: str, questions: Path, top_k: int, as_json: bool, postgres: str | None) -> None:
    from wrapper.rag.evaluate import evaluate, load_questions
    from wrapper.rag.retriever import Retriever

    retriever = Retriever.open(name, postgres=postgres)
    result = evaluate(retriever, load_questions(questions), top_k)
    if as_json:
        rows = [
            {
                "question": r.question,
                "expected": r.expected,
                "found": r.found,
                "first_rank": r.first_rank,
                "top": r.top_ids,
            }
            for r in result.rows
        ]
        click.echo(
            json.dumps(
                {"k": top_k, "recall": result.recall, "mrr": result.mrr, "questions": rows},
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    for r in result.rows:
        mark = f"rank {r.first_rank}" if r.first_rank else "missed"
        click.echo(f"{mark:<8} {len(r.found)}/{len(r.expected)}  {r.question}")
    click.echo(f"{len(result.rows)} questions: recall@{top_k} {result.recall:.3f}, MRR {result.mrr:.3f}")
