"""API keys: stored as SHA-256 hashes in a SQLite file, shown once at creation.

A key looks like `sk-lfw-<key id>-<secret>`. The key id (8 hex digits) is public: it names the key in
`lfwrap keys list`, in access logs and in metrics. The secret is 32 random bytes; only the hash of the
whole key is stored, so the database alone cannot be used to call the gateway. The gateway reads the
keys into memory (`KeyCache`) and notices changes made by `lfwrap keys` from another process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from wrapper.errors import GatewayError

log = logging.getLogger("lfwrap.gateway")

KEY_PREFIX = "sk-lfw-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id   TEXT PRIMARY KEY,
    hash     TEXT NOT NULL UNIQUE,
    name     TEXT,
    models   TEXT,            -- JSON list of allowed model names, NULL = all
    rpm      INTEGER,         -- requests per minute, NULL = unlimited
    created  REAL NOT NULL,
    revoked  REAL             -- time of revocation, NULL = active
)
"""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str | None
    models: tuple[str, ...] | None
    rpm: int | None
    created: float
    revoked: float | None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _record(row: tuple) -> KeyRecord:
    key_id, name, models, rpm, created, revoked = row
    return KeyRecord(key_id, name, tuple(json.loads(models)) if models else None, rpm, created, revoked)


class KeyStore:
    """The SQLite file behind `lfwrap keys`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise GatewayError(
                f"Cannot open the key store {path}: {exc}; check that the folder is writable (LFWRAP_HOME)."
            ) from exc
        try:
            path.chmod(0o600)
        except OSError:
            pass

    def close(self) -> None:
        self._db.close()

    def create(
        self, *, models: list[str] | None = None, rpm: int | None = None, name: str | None = None
    ) -> tuple[KeyRecord, str]:
        """Store a new key; returns its record and the full key, which is never stored or shown again."""
        if rpm is not None and rpm < 1:
            raise GatewayError(f"--rpm must be at least 1, got {rpm}; leave it out for no limit.")
        for _ in range(5):
            key_id = secrets.token_hex(4)
            key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
            created = time.time()
            try:
                self._db.execute(
                    "INSERT INTO keys (key_id, hash, name, models, rpm, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, hash_key(key), name, json.dumps(models) if models else None, rpm, created),
                )
            except sqlite3.IntegrityError:
                continue  # key id collision: draw again
            return KeyRecord(key_id, name, tuple(models) if models else None, rpm, created, None), key
        raise GatewayError(f"Could not draw a unique key id in {self.path}; try again.")

    def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        sql = "SELECT key_id, name, models, rpm, created, revoked FROM keys"
        if not include_revoked:
            sql += " WHERE revoked IS NULL"
        return [_record(row) for row in self._db.execute(sql + " ORDER BY created")]

    def revoke(self, key_id: str) -> KeyRecord:
        key_id = key_id.removeprefix(KEY_PREFIX)[:8]
        cursor = self._db.execute(
            "UPDATE keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL", (time.time(), key_id)
        )
        rows = self._db.execute(
            "SELECT key_id, name, models, rpm, created, revoked FROM keys WHERE key_id = ?", (key_id,)
        ).fetchall()
        if not rows:
            raise GatewayError(
                f"No key with id {key_id!r} in {self.path}; see `lfwrap keys list` for the ids."
            )
        record = _record(rows[0])
        if cursor.rowcount == 0:
            raise GatewayError(f"Key {key_id} was already revoked; nothing to do.")
        return record

    def active_hashes(self) -> dict[str, KeyRecord]:
        rows = self._db.execute(
            "SELECT key_id, name, models, rpm, created, revoked, hash FROM keys WHERE revoked IS NULL"
        ).fetchall()
        return {row[6]: _record(row[:6]) for row in rows}

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the file."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])


class KeyCache:
    """The active keys by hash, in memory. lookup() never touches SQLite: the file is re-read in a
    worker thread (refresh(), at most once per `refresh_s`, bounded by `timeout_s`), and when that
    fails (a locked or broken keys.db) the keys read last stay in use."""

    def __init__(self, store: KeyStore, refresh_s: float = 1.0, timeout_s: float = 0.5):
        self.store = store
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._version = store.data_version()
        self._by_hash = store.active_hashes()
        self._hash_of = {record.key_id: digest for digest, record in self._by_hash.items()}
        self._checked = time.monotonic()
        self._reading: asyncio.Future[None] | None = None
        self.failures = 0
        # a writer holding the file's lock makes a read wait at most this long, in the worker thread
        store._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")

    def __len__(self) -> int:
        return len(self._by_hash)

    def _reload(self) -> None:
        """In a worker thread: re-read the keys if another process changed the file."""
        version = self.store.data_version()
        if version != self._version:
            by_hash = self.store.active_hashes()
            self._hash_of = {record.key_id: digest for digest, record in by_hash.items()}
            self._by_hash, self._version = by_hash, version

    async def refresh(self, *, join: bool = True) -> None:
        """Re-read the file when refresh_s has passed since the last try, waiting at most timeout_s.
        join=False: wait only for a read this call starts, not for one already under way."""
        started = False
        if self._reading is None and time.monotonic() - self._checked >= self.refresh_s:
            self._checked = time.monotonic()
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._reload))
            self._reading.add_done_callback(self._read_done)
            started = True
        reading = self._reading
        if reading is None or not (started or join):
            return
        try:
            await asyncio.wait_for(asyncio.shield(reading), self.timeout_s)
        except Exception as exc:  # locked, unreadable, too slow: keep serving the keys read last
            self.failures += 1
            log.warning(
                "key store %s not re-read (%s); using the keys read before",
                self.store.path,
                exc.__class__.__name__,
            )

    def _read_done(self, future: asyncio.Future[None]) -> None:
        self._reading = None
        if not future.cancelled():
            future.exception()  # retrieved here so asyncio does not log it as never retrieved

    def lookup(self, key: str) -> KeyRecord | None:
        """The active key's record, or None. The key is hashed first (an index on the hash reveals
        nothing about the key), then the stored hash is compared in constant time."""
        digest = hash_key(key)
        record = self._by_hash.get(digest)
        if record is None:
            return None
        stored = self._hash_of[record.key_id]
        return record if hmac.compare_digest(stored, digest) else None
