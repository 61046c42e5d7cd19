"""`lfwrap keys`: create, list and revoke the gateway's API keys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from wrapper.gateway.keys import KeyRecord, KeyStore
from wrapper.gateway.settings import load_settings

_CONFIG = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Gateway YAML whose keys_db to use (default $LFWRAP_HOME/gateway/keys.db).",
)


def _store(config: Path | None) -> KeyStore:
    return KeyStore(load_settings(config).keys_path())


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"


@click.group(
    help="""Create, list and revoke the gateway's API keys.

Only a SHA-256 hash of each key is stored (SQLite under $LFWRAP_HOME); the key itself is printed once,
by `keys create`. The key id (8 hex digits) names a key in lists, access logs and metrics.""",
    epilog="""\b
Examples:
  $ lfwrap keys create                              # any model, no rate limit
  $ lfwrap keys create --models conch --rpm 60 --name billing
  $ export OPENAI_API_KEY=$(lfwrap keys create)     # the key is the only line on stdout
  $ lfwrap keys list
  $ lfwrap keys revoke 1a2b3c4d
""",
)
def keys() -> None:
    pass


@keys.command(
    help="""Create a key and print it once (stdout); only its hash is stored.""",
    epilog="""\b
Examples:
  $ lfwrap keys create
  $ lfwrap keys create --models conch,conch-dpo --rpm 120 --name team-a
""",
)
@click.option(
    "--models",
    "models",
    multiple=True,
    help="Model names (the gateway's routes) this key may use; repeat or comma-separate; default: all.",
)
@click.option(
    "--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute allowed (default: no limit)."
)
@click.option("--name", default=None, help="A label shown by `keys list`.")
@_CONFIG
def create(models: tuple[str, ...], rpm: int | None, name: str | None, config: Path | None) -> None:
    names = [part.strip() for value in models for part in value.split(",") if part.strip()]
    store = _store(config)
    record, key = store.create(models=names or None, rpm=rpm, name=name)
    scope = ", ".join(record.models) if record.models else "all models"
    limit = f"{record.rpm} requests/minute" if record.rpm else "no rate limit"
    click.echo(f"Created key {record.key_id} ({scope}; {limit}) in {store.path}.", err=True)
    click.echo(key)
    click.echo("Store it now: lfwrap keeps only its hash and cannot show it again.", err=True)


@keys.command(
    name="list",
    help="""List keys: id, name, models, rate, created, status (never the keys).""",
    epilog="""\b
Examples:
  $ lfwrap keys list
  $ lfwrap keys list --active --json
""",
)
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_CONFIG
def list_(active: bool, as_json: bool, config: Path | None) -> None:
    records: list[KeyRecord] = _store(config).list(include_revoked=not active)
    if as_json:
        rows = [
            {
                "key_id": r.key_id,
                "name": r.name,
                "models": list(r.models) if r.models else None,
                "rpm": r.rpm,
                "created": r.created,
                "revoked": r.revoked,
            }
            for r in records
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not records:
        click.echo("No keys yet: create one with `lfwrap keys create`.")
        return
    header = f"{'ID':<9} {'NAME':<16} {'MODELS':<24} {'RPM':>6}  {'CREATED':<16}  STATUS"
    click.echo(header)
    for r in records:
        status = "active" if r.active else f"revoked {_when(r.revoked)}"
        models = ",".join(r.models) if r.models else "*"
        click.echo(
            f"{r.key_id:<9} {(r.name or '-')[:16]:<16} {models[:24]:<24} {r.rpm or '-':>6}  "
            f"{_when(r.created):<16}  {status}"
        )


@keys.command(
    help="""Revoke a key by its id; a running gateway refuses it within a second.""",
    epilog="""\b
Examples:
  $ lfwrap keys revoke 1a2b3c4d
""",
)
@click.argument("key_id")
@_CONFIG
def revoke(key_id: str, config: Path | None) -> None:
    record = _store(config).revoke(key_id)
    click.echo(f"Revoked key {record.key_id}.")
