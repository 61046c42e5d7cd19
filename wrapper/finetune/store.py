"""The fine-tuning state: one SQLite file (WAL), created on first use, surviving restarts.

    files        the uploaded file objects, their checksum, where the bytes are, row problems
    jobs         the job objects, plus what the worker keeps about each (run name, last step seen)
    events       each job's events, in the order they happened
    checkpoints  each job's checkpoint objects (stable ids: one per checkpoint-N folder)
    servers      the API servers the serving pool started (pid + identity), to find orphans

Objects are stored as the OpenAI-shaped JSON they are served as; `seq` orders them (newest first
in every list, as OpenAI's lists are). One connection shared under a lock: calls are short, and the
gateway's handlers and the worker reach it from several threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

from wrapper.errors import FineTuneError
from wrapper.finetune import objects

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, object TEXT NOT NULL,
  sha256 TEXT NOT NULL, path TEXT NOT NULL, info TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
  object TEXT NOT NULL, private TEXT NOT NULL, fine_tuned_model TEXT);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs(fine_tuned_model);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
  object TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
  object TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS servers (
  model TEXT PRIMARY KEY, port INTEGER NOT NULL, pid INTEGER NOT NULL, identity TEXT NOT NULL,
  url TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files_dir = path.parent / "files"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _page(
        self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int
    ) -> list[Any]:
        if after is not None:
            found = self._all(f"SELECT seq FROM {table} WHERE id = ? AND {where}", (after, *args))
            if not found:
                raise FineTuneError(
                    f"`after` names no item of this list: {after!r}.", code="invalid_after", param="after"
                )
            where, args = f"{where} AND seq < ?", (*args, found[0][0])
        rows = self._all(
            f"SELECT object FROM {table} WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit + 1)
        )
        return [json.loads(row[0]) for row in rows]

    # files
    def add_file(self, obj: dict[str, Any], *, sha256: str, path: Path, info: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO files (id, object, sha256, path, info) VALUES (?, ?, ?, ?, ?)",
            (obj["id"], json.dumps(obj), sha256, str(path), json.dumps(info)),
        )

    def file_row(self, file_id: str) -> tuple[dict[str, Any], str, Path, dict[str, Any]] | None:
        rows = self._all(
            "SELECT object, sha256, path, info FROM files WHERE id = ? AND deleted = 0", (file_id,)
        )
        if not rows:
            return None
        obj, sha256, path, info = rows[0]
        return json.loads(obj), sha256, Path(path), json.loads(info)

    def list_files(self, after: str | None, limit: int, purpose: str | None = None) -> dict[str, Any]:
        where, args = "deleted = 0", cast(tuple[Any, ...], ())
        if purpose:
            where, args = "deleted = 0 AND json_extract(object, '$.purpose') = ?", (purpose,)
        return objects.page(self._page("files", where, args, after, limit), limit)

    def delete_file(self, file_id: str) -> bool:
        return self._write("UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0", (file_id,)) > 0

    # jobs
    def add_job(self, obj: dict[str, Any], private: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO jobs (id, status, object, private) VALUES (?, ?, ?, ?)",
            (obj["id"], obj["status"], json.dumps(obj), json.dumps(private)),
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._all("SELECT object FROM jobs WHERE id = ?", (job_id,))
        return json.loads(rows[0][0]) if rows else None

    def private(self, job_id: str) -> dict[str, Any]:
        rows = self._all("SELECT private FROM jobs WHERE id = ?", (job_id,))
        return json.loads(rows[0][0]) if rows else {}

    def update_job(
        self, job_id: str, private: dict[str, Any] | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Change fields of a job object (and, optionally, merge into its private part) atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                obj_text, private_text = self._db.execute(
                    "SELECT object, private FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                obj = {**json.loads(obj_text), **changes}
                kept = {**json.loads(private_text), **(private or {})}
                self._db.execute(
                    "UPDATE jobs SET status = ?, object = ?, private = ?, fine_tuned_model = ? WHERE id = ?",
                    (obj["status"], json.dumps(obj), json.dumps(kept), obj.get("fine_tuned_model"), job_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return obj

    def list_jobs(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        where, args = "1 = 1", cast(tuple[Any, ...], ())
        for key, value in (metadata or {}).items():
            where, args = f"{where} AND json_extract(object, ?) = ?", (*args, f'$.metadata."{key}"', value)
        return objects.page(self._page("jobs", where, args, after, limit), limit)

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._all(f"SELECT object FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)
        return [json.loads(row[0]) for row in rows]

    def job_for_model(self, model: str) -> dict[str, Any] | None:
        rows = self._all(
            "SELECT object FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded'", (model,)
        )
        return json.loads(rows[0][0]) if rows else None

    def fine_tuned_models(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT object FROM jobs WHERE status = 'succeeded' ORDER BY seq")
        return [json.loads(row[0]) for row in rows]

    # events and checkpoints
    def add_event(self, event: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO events (id, job_id, object) VALUES (?, ?, ?)",
            (event["id"], event["fine_tuning_job_id"], json.dumps(event)),
        )

    def list_events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return objects.page(self._page("events", "job_id = ?", (job_id,), after, limit), limit)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The data of the job's metrics events, oldest first."""
        rows = self._all(
            "SELECT json_extract(object, '$.data') FROM events WHERE job_id = ? "
            "AND json_extract(object, '$.type') = 'metrics' ORDER BY seq",
            (job_id,),
        )
        return [json.loads(row[0]) for row in rows]

    def add_checkpoint(self, checkpoint: dict[str, Any]) -> bool:
        return (
            self._write(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, object) VALUES (?, ?, ?)",
                (checkpoint["id"], checkpoint["fine_tuning_job_id"], json.dumps(checkpoint)),
            )
            > 0
        )

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return objects.page(self._page("checkpoints", "job_id = ?", (job_id,), after, limit), limit)

    # servers of the serving pool
    def record_server(self, model: str, port: int, pid: int, identity: dict[str, Any], url: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO servers (model, port, pid, identity, url) VALUES (?, ?, ?, ?, ?)",
            (model, port, pid, json.dumps(identity), url),
        )

    def forget_server(self, model: str) -> None:
        self._write("DELETE FROM servers WHERE model = ?", (model,))

    def servers(self) -> list[tuple[str, int, int, dict[str, Any], str]]:
        rows = self._all("SELECT model, port, pid, identity, url FROM servers")
        return [(model, port, pid, json.loads(identity), url) for model, port, pid, identity, url in rows]
