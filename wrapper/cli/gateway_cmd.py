"""`lfwrap gateway`: the OpenAI-compatible gateway in front of LLaMA-Factory API servers."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from wrapper.cli.options import host_option, model_name_option, port_option, renamed
from wrapper.errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(
    help="""Run the OpenAI-compatible gateway in front of LLaMA-Factory API servers.

Routes POST /v1/chat/completions by `model` to the configured upstreams (plain and SSE streaming),
passes /v1/score/evaluation through, and serves /v1/models, /healthz, /readyz and /metrics.
Settings come from --config (YAML), then LFWRAP_* environment variables, then these flags.

Safe to expose with its defaults: headers at most 64 KB / 100 and within 10 s, URLs at most 8 KB,
bodies at most 4 MB and within 15 s, 1,024 connections, SIGTERM drains streams for up to 30 s;
each limit is a setting (max_header_bytes, header_timeout, max_url_bytes, max_body_bytes,
body_timeout, max_connections, send_timeout, max_response_bytes, shutdown_timeout; see
docs/RELIABILITY.md). --tls-cert/--tls-key serve HTTPS, with HTTP/2 by ALPN.

RAG: a route with `rag:` grounds each chat request in a `lfwrap rag index` (indexes are opened at
start; a missing one stops the start). Answers carry `sources` and an x-lfwrap-sources header;
`"rag": false` in the body or `x-lfwrap-rag: off` opts a request out. POST /v1/rag/INDEX/search
shows what a query retrieves.

Fine-tuning: with a `fine_tuning:` block the gateway also serves OpenAI's /v1/files and
/v1/fine_tuning/jobs (the openai client's files.create and fine_tuning.jobs.create), trains the jobs
in its own process, and serves each result under its `ft:` name (a server started on demand, stopped
when idle and when the gateway stops). `lfwrap jobs` lists and cancels them.

Keys: by default every request needs an API key from `lfwrap keys create` (Authorization: Bearer).
With no key created yet the gateway still starts, but answers 401 to every request until you
create one. --open turns key checks off (refused unless --host is a loopback address).

\b
gateway.yaml:
  host: 0.0.0.0
  port: 8080
  models:
    - name: conch
      upstream: http://127.0.0.1:8000
      upstream_key: <the API_KEY of that server, if any>
      max_concurrency: 1        # LLaMA-Factory answers one request at a time
      max_queue: 32
      tokenizer: ~/.lfwrap/models/tiny-llama   # exact usage counts when streaming
      rag: {index: krusty-docs, top_k: 4, min_score: 0.0, max_context_tokens: 1500}
    - name: sponge              # replicas: fewest in flight first; one refusing connections
      upstream: [http://gpu-1:8000, http://gpu-2:8000]   # leaves the rotation until it answers
  fine_tuning:                  # OpenAI's /v1/files + /v1/fine_tuning/jobs; serves ft: models
    backend: local
    max_parallel_jobs: 1
    files_max_bytes: 536870912
    serve: {idle_stop_s: 900, max_resident: 2, ports: "18100-18199"}
    base_models:
      - name: tiny-demo
        path: ~/.lfwrap/models/tiny-llama
        template: default
        overrides: {learning_rate: 5.0e-3, cutoff_len: 128, lora_rank: 16}
""",
    epilog="""\b
Examples:
  $ lfwrap keys create                       # prints the key once
  $ lfwrap gateway --upstream http://127.0.0.1:8000 --model-name conch
  $ lfwrap gateway --config gateway.yaml --port 8080
  $ lfwrap gateway --upstream http://127.0.0.1:8000 --model-name conch --rag-index krusty-docs
  $ lfwrap gateway --config gateway.yaml --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
  $ LFWRAP_PORT=9000 lfwrap gateway --config gateway.yaml
""",
)
@click.option(
    "--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Gateway YAML file."
)
@host_option(None, "Address to listen on (default 127.0.0.1).")
@port_option(None, "Port to listen on (default 8080; 0 picks a free one).", lowest=0)
@click.option(
    "--upstream", metavar="URL", default=None, help="Quick start: URL of one LLaMA-Factory API server."
)
@model_name_option("Quick start: the name callers send as `model` to reach --upstream (the route's name).")
@click.option(
    "--upstream-key",
    envvar="LFWRAP_UPSTREAM_KEY",
    default=None,
    help="API_KEY of the --upstream server (or env LFWRAP_UPSTREAM_KEY).",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Requests in flight to --upstream (default 1, LLaMA-Factory's own limit).",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="tokenizer.json or model folder of --upstream's model, for exact usage counts.",
)
@click.option(
    "--rag-index",
    default=None,
    help="Ground --model-name's chat requests in this `lfwrap rag` index (top_k 4, max_context_tokens 1500).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate: serve HTTPS (HTTP/2 offered by ALPN); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key for --tls-cert.",
)
@click.option("--open", "open_", is_flag=True, help="Accept requests without an API key (loopback only).")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Least severe log lines to print.",
)
@renamed("--model", "--model-name", "model_name")
def gateway(
    config: Path | None,
    host: str | None,
    port: int | None,
    upstream: str | None,
    model_name: str | None,
    upstream_key: str | None,
    max_concurrency: int | None,
    tokenizer: Path | None,
    rag_index: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    open_: bool,
    log_level: str,
) -> None:
    from wrapper.gateway import server
    from wrapper.gateway.keys import KeyStore
    from wrapper.gateway.settings import ModelRoute, load_settings

    if (upstream is None) != (model_name is None):
        raise UsageError(
            "--upstream and --model-name go together: --upstream http://127.0.0.1:8000 --model-name conch."
        )
    if rag_index is not None and upstream is None:
        raise UsageError(
            "--rag-index goes with --upstream and --model-name; in a --config file give the route a `rag:` "
            "block."
        )
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: pass both to serve HTTPS.")
    flags = {
        "host": host,
        "port": port,
        "auth": "open" if open_ else None,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    settings = load_settings(config, **flags)
    if upstream is not None and model_name is not None:
        quick = {
            "name": model_name,
            "upstream": upstream,
            "upstream_key": upstream_key,
            "max_concurrency": max_concurrency or 1,
            "tokenizer": tokenizer,
            "rag": {"index": rag_index} if rag_index else None,
        }
        models = [r.model_dump() for r in settings.models if r.name != model_name]
        models.append({k: v for k, v in quick.items() if v is not None})
        settings = load_settings(config, **flags, models=[ModelRoute.model_validate(m) for m in models])
    if not settings.models and settings.fine_tuning is None:
        raise UsageError(
            "No models to serve: pass --upstream URL --model-name NAME, or a --config file with `models:` "
            "or `fine_tuning:`."
        )
    if settings.auth == "open" and not is_loopback(settings.host):
        raise UsageError(
            f"Refusing to run without API keys on {settings.host}: use --host 127.0.0.1 with --open, "
            "or create keys with `lfwrap keys create`."
        )
    for route in settings.models:
        click.echo(
            f"model {route.name} -> {', '.join(route.urls)} (max_concurrency {route.max_concurrency}, "
            f"max_queue {route.max_queue})" + (f", rag index {route.rag.index}" if route.rag else ""),
            err=True,
        )
    if settings.fine_tuning is not None:
        ft = settings.fine_tuning
        click.echo(
            f"fine-tuning: /v1/files and /v1/fine_tuning/jobs on, base models "
            f"{', '.join(b.name for b in ft.base_models) or '(none configured)'}, {ft.backend} backend, "
            f"{ft.max_parallel_jobs} job(s) at a time, state in {ft.database_path}",
            err=True,
        )
    if settings.auth == "open":
        click.echo("auth: OPEN - no API key is checked (--open).", err=True)
    else:
        store = KeyStore(settings.keys_path())
        count = len(store.list(include_revoked=False))
        store.close()
        if count == 0:
            click.echo(
                f"auth: keys - no API key exists yet in {settings.keys_path()}: every request gets 401 "
                "until you run `lfwrap keys create`.",
                err=True,
            )
        else:
            click.echo(f"auth: keys - {count} active key(s) in {settings.keys_path()}.", err=True)
    scheme = "https" if settings.tls_cert is not None else "http"
    click.echo(f"OpenAI base URL: {scheme}://{settings.host}:{settings.port}/v1", err=True)
    server.run(settings, log_level=log_level)
