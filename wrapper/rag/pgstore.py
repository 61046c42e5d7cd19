"""The same index in PostgreSQL: for an index shared by several gateways, or too big for one machine's RAM.

Chosen over Qdrant because teams already run PostgreSQL and it computes BM25 itself: every term
occurrence is a row of lfwrap_rag_postings (index name, term, chunk, tf) with a (name, term) B-tree, and
a search is one SQL query applying Lucene's BM25 (k1 1.5, b 0.75) over the query terms' postings,
the same formula bm25s computes for the embedded store, so both rank alike. Segmentation stays in Python
(jieba-rs): stock PostgreSQL full-text search has no Chinese parser.

`PostgresStore(dsn, name)` offers what the embedded store offers: `current_manifest()` and `apply()` for
`index_paths` (changed files only, in one transaction), `open()` and `search()` for a Retriever.
Tables are created on first write; several indexes share them, told apart by name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from wrapper.errors import IndexBrokenError, IndexMissingError, RagError
from wrapper.rag.chunking import Chunk, Hit
from wrapper.rag.lexical import K1, B
from wrapper.rag.store import FileChunks, Manifest, check_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS lfwrap_rag_manifest (name text PRIMARY KEY, manifest jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS lfwrap_rag_chunks (
    name text NOT NULL, id text NOT NULL, source text NOT NULL, position integer NOT NULL,
    title text NOT NULL, text text NOT NULL, length integer NOT NULL, PRIMARY KEY (name, id));
CREATE TABLE IF NOT EXISTS lfwrap_rag_postings (
    name text NOT NULL, term text NOT NULL, chunk_id text NOT NULL, source text NOT NULL,
    tf integer NOT NULL);
CREATE INDEX IF NOT EXISTS lfwrap_rag_postings_term ON lfwrap_rag_postings (name, term);
CREATE INDEX IF NOT EXISTS lfwrap_rag_postings_source ON lfwrap_rag_postings (name, source);
CREATE INDEX IF NOT EXISTS lfwrap_rag_chunks_source ON lfwrap_rag_chunks (name, source);
"""

_BM25 = (
    "q.w * ln(1 + (s.n - df.df + 0.5) / (df.df + 0.5))"
    " * p.tf / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * c.length / s.avgdl))"
)
SEARCH = f"""
WITH q(term, w) AS (SELECT * FROM unnest(%(terms)s::text[], %(weights)s::float8[])),
stats AS (SELECT count(*)::float8 AS n, avg(length)::float8 AS avgdl
          FROM lfwrap_rag_chunks WHERE name = %(name)s),
df AS (SELECT p.term, count(*)::float8 AS df FROM lfwrap_rag_postings p JOIN q USING (term)
       WHERE p.name = %(name)s GROUP BY p.term)
SELECT c.id, c.source, c.position, c.title, c.text, sum({_BM25}) AS score
FROM lfwrap_rag_postings p
JOIN q USING (term) JOIN df USING (term)
JOIN lfwrap_rag_chunks c ON c.name = p.name AND c.id = p.chunk_id
CROSS JOIN stats s
WHERE p.name = %(name)s
GROUP BY c.id, c.source, c.position, c.title, c.text
HAVING sum({_BM25}) >= %(min_score)s
ORDER BY score DESC, c.source, c.position
LIMIT %(k)s
"""


def _connect(dsn: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexMissingError(f"Cannot connect to PostgreSQL at {_safe(dsn)} ({first}).") from exc


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "the given DSN"
    parts.pop("password", None)
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


class PostgresStore:
    def __init__(self, dsn: str, name: str):
        self.dsn = dsn
        self.name = check_name(name)
        self._conn: Any = None
        self.manifest: Manifest | None = None  # set by open()

    # -- what index_paths needs
    def current_manifest(self) -> Manifest | None:
        with _connect(self.dsn) as conn:
            exists = conn.execute("SELECT to_regclass('lfwrap_rag_manifest') IS NOT NULL").fetchone()[0]
            if not exists:
                return None
            row = conn.execute(
                "SELECT manifest FROM lfwrap_rag_manifest WHERE name = %s", (self.name,)
            ).fetchone()
        if row is None:
            return None
        try:
            return Manifest.model_validate(row[0])
        except ValueError as exc:
            raise IndexBrokenError(
                f"The manifest of {self.name!r} in PostgreSQL cannot be read; re-index."
            ) from exc

    def apply(self, manifest: Manifest, changed: dict[str, FileChunks]) -> None:
        if manifest.embedding_model:
            raise RagError(
                "Dense retrieval (--embedding-model) works with the embedded store only, not PostgreSQL."
            )
        with _connect(self.dsn) as conn, conn.transaction():
            conn.execute(SCHEMA)
            old = conn.execute(
                "SELECT DISTINCT source FROM lfwrap_rag_chunks WHERE name = %s", (self.name,)
            ).fetchall()
            drop = [s for (s,) in old if s in changed or s not in manifest.files]
            for table in ("lfwrap_rag_chunks", "lfwrap_rag_postings"):
                conn.execute(f"DELETE FROM {table} WHERE name = %s AND source = ANY(%s)", (self.name, drop))
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY lfwrap_rag_chunks (name, id, source, position, title, text, length) FROM STDIN"
                ) as cp:
                    for entry in changed.values():
                        for c, toks in zip(entry.chunks, entry.tokens, strict=True):
                            cp.write_row((self.name, c.id, c.source, c.position, c.title, c.text, len(toks)))
                with cur.copy("COPY lfwrap_rag_postings (name, term, chunk_id, source, tf) FROM STDIN") as cp:
                    for entry in changed.values():
                        for c, toks in zip(entry.chunks, entry.tokens, strict=True):
                            for term, tf in Counter(toks).items():
                                cp.write_row((self.name, term, c.id, c.source, tf))
            conn.execute(
                "INSERT INTO lfwrap_rag_manifest (name, manifest) VALUES (%s, %s::jsonb) "
                "ON CONFLICT (name) DO UPDATE SET manifest = EXCLUDED.manifest",
                (self.name, manifest.model_dump_json()),
            )

    def remove(self) -> None:
        with _connect(self.dsn) as conn, conn.transaction():
            conn.execute(SCHEMA)
            for table in ("lfwrap_rag_manifest", "lfwrap_rag_chunks", "lfwrap_rag_postings"):
                conn.execute(f"DELETE FROM {table} WHERE name = %s", (self.name,))

    # -- what a Retriever needs
    @classmethod
    def open(cls, dsn: str, name: str) -> PostgresStore:
        """Connect and check the index is there and whole; errors now, not at the first search."""
        store = cls(dsn, name)
        manifest = store.current_manifest()
        if manifest is None:
            raise IndexMissingError(
                f"No retrieval index {name!r} in PostgreSQL at {_safe(dsn)}; "
                f"create it with `lfwrap rag index {name} PATH... --postgres DSN`."
            )
        store._conn = _connect(dsn)
        count = store._conn.execute(
            "SELECT count(*) FROM lfwrap_rag_chunks WHERE name = %s", (name,)
        ).fetchone()
        if count[0] != manifest.chunk_count:
            raise IndexBrokenError(
                f"The index {name!r} in PostgreSQL has {count[0]} chunks, its manifest "
                f"{manifest.chunk_count}; re-index it."
            )
        store.manifest = manifest
        return store

    def search(self, queries: Sequence[tuple[list[str], float]], k: int, min_score: float) -> list[Hit]:
        weights: dict[str, float] = defaultdict(float)
        for tokens, weight in queries:
            for term in tokens:
                weights[term] += weight  # a repeated term counts again, as in bm25s
        if not weights or k <= 0:
            return []
        params = {
            "terms": list(weights),
            "weights": list(weights.values()),
            "name": self.name,
            "k": k,
            "min_score": max(min_score, 1e-12),
            "k1": K1,
            "b": B,
        }
        rows = self._conn.execute(SEARCH, params).fetchall()
        return [Hit(Chunk(r[0], r[1], r[2], r[3], r[4]), float(r[5])) for r in rows]

    dense = False  # vectors live in the embedded store only

    def dense_search(self, text: str, k: int) -> list[Hit]:
        return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
