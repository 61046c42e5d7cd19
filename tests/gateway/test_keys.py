"""API keys: hashes only on disk, shown once, listed by id, revoked; through the library and the real CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from wrapper.errors import GatewayError
from wrapper.gateway.keys import KeyCache, KeyStore, hash_key


def test_only_the_hash_is_stored(tmp_path: Path):
    store = KeyStore(tmp_path / "keys.db")
    record, key = store.create(models=["conch"], rpm=30, name="team-a")
    assert key.startswith(f"sk-lfw-{record.key_id}-") and len(key) > 40
    raw = (tmp_path / "keys.db").read_bytes()
    assert key.encode() not in raw and key.split("-", 3)[3].encode() not in raw
    rows = (
        sqlite3.connect(tmp_path / "keys.db").execute("SELECT key_id, hash, models, rpm FROM keys").fetchall()
    )
    assert rows == [(record.key_id, hash_key(key), '["conch"]', 30)]
    assert (tmp_path / "keys.db").stat().st_mode & 0o077 == 0


def test_lookup_allows_and_revoke(tmp_path: Path):
    store = KeyStore(tmp_path / "keys.db")
    record, key = store.create(models=["conch"])
    cache = KeyCache(KeyStore(tmp_path / "keys.db"), refresh_s=0.0)
    found = cache.lookup(key)
    assert found is not None and found.key_id == record.key_id
    assert found.allows("conch") and not found.allows("krabs")
    assert cache.lookup(key + "x") is None
    store.revoke(record.key_id)
    asyncio.run(cache.refresh())
    assert cache.lookup(key) is None  # the other connection's change is seen
    with pytest.raises(GatewayError, match="already revoked"):
        store.revoke(record.key_id)
    with pytest.raises(GatewayError, match="keys list"):
        store.revoke("00000000")


def test_cli_create_list_revoke(lfwrap, lfwrap_home: Path):
    created = lfwrap("keys", "create", "--models", "conch,krabs", "--rpm", "60", "--name", "billing")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-lfw-") and "\n" not in key  # the key is the only thing on stdout
    key_id = key.removeprefix("sk-lfw-")[:8]
    assert f"Created key {key_id}" in created.stderr and "cannot show it again" in created.stderr

    listed = lfwrap("keys", "list")
    assert listed.returncode == 0
    assert key_id in listed.stdout and "billing" in listed.stdout and "conch,krabs" in listed.stdout
    assert key not in listed.stdout and key.split("-", 3)[3] not in listed.stdout
    rows = json.loads(lfwrap("keys", "list", "--json").stdout)
    assert rows[0]["key_id"] == key_id and rows[0]["models"] == ["conch", "krabs"] and rows[0]["rpm"] == 60

    revoked = lfwrap("keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"Revoked key {key_id}" in revoked.stdout
    assert json.loads(lfwrap("keys", "list", "--active", "--json").stdout) == []
    again = lfwrap("keys", "revoke", key_id)
    assert again.returncode == 1 and again.stderr.startswith("Error: Key") and "Traceback" not in again.stderr
    assert (lfwrap_home / "gateway" / "keys.db").is_file()


def test_cli_rejects_bad_rpm_and_help_has_examples(lfwrap):
    bad = lfwrap("keys", "create", "--rpm", "0")
    assert bad.returncode == 2 and "--rpm" in bad.stderr  # click's usage error
    for args in (
        ("keys", "--help"),
        ("keys", "create", "--help"),
        ("keys", "list", "--help"),
        ("keys", "revoke", "--help"),
    ):
        help_text = lfwrap(*args).stdout
        assert help_text.rstrip().splitlines()[-1].strip().startswith("$ lfwrap keys")
