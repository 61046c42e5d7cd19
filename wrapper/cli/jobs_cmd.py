"""`lfwrap jobs`: list, show, follow the events of, and cancel fine-tuning jobs on a gateway (over HTTP,
OpenAI's /v1/fine_tuning/jobs endpoints, with an API key)."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import httpx

from wrapper.errors import GatewayError

DEFAULT_URL = "http://127.0.0.1:8080"


class GatewayClient:
    """The few calls the CLI makes; `transport` lets tests put an httpx.MockTransport underneath."""

    def __init__(self, url: str, api_key: str | None, transport: httpx.BaseTransport | None = None):
        base = url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.url = base
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=f"{base}/v1", headers=headers, transport=transport, timeout=60)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        query = {key: value for key, value in (params or {}).items() if value is not None}
        try:
            response = self.http.request(method, path, params=query)
        except httpx.TransportError as exc:
            raise GatewayError(
                f"Could not reach the gateway at {self.url} ({exc.__class__.__name__}); start it with "
                "`lfwrap gateway`, or point --gateway-url (LFWRAP_GATEWAY_URL) at it."
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:200]
            hint = " Pass a key with --api-key or OPENAI_API_KEY." if response.status_code == 401 else ""
            status = response.status_code
            where = f"{method} /v1{path} ({status})"
            raise GatewayError(f"The gateway at {self.url} refused {where}: {message}{hint}")
        if not isinstance(body, dict):
            raise GatewayError(f"The gateway at {self.url} answered {method} /v1{path} with no JSON object.")
        return body


def _when(stamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _client(ctx: click.Context) -> GatewayClient:
    obj = ctx.find_object(dict) or {}
    return GatewayClient(obj["jobs_url"], obj["jobs_key"], obj.get("transport"))


_JSON = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


@click.group(
    help="""List, show, follow and cancel fine-tuning jobs on a gateway.

Talks to the gateway's OpenAI-compatible /v1/fine_tuning/jobs endpoints, as the openai client does.""",
    epilog="""\b
Examples:
  $ export LFWRAP_GATEWAY_URL=http://127.0.0.1:8080 OPENAI_API_KEY=sk-...
  $ lfwrap jobs list
  $ lfwrap jobs show ftjob-abc123
  $ lfwrap jobs events ftjob-abc123 --limit 50
  $ lfwrap jobs cancel ftjob-abc123
""",
)
@click.option(
    "--gateway-url",
    envvar="LFWRAP_GATEWAY_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The gateway's base URL (env LFWRAP_GATEWAY_URL); a trailing /v1 is fine.",
)
@click.option(
    "--api-key",
    envvar="OPENAI_API_KEY",
    default=None,
    help="A gateway API key (env OPENAI_API_KEY), from `lfwrap keys create`.",
)
@click.pass_context
def jobs(ctx: click.Context, gateway_url: str, api_key: str | None) -> None:
    ctx.ensure_object(dict)
    ctx.obj["jobs_url"] = gateway_url
    ctx.obj["jobs_key"] = api_key


@jobs.command(
    "list",
    help="List fine-tuning jobs, newest first.",
    epilog="""\b
Examples:
  $ lfwrap jobs list
  $ lfwrap jobs list --limit 5 --after ftjob-abc123
  $ lfwrap jobs list --json
""",
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="Jobs per page.")
@click.option("--after", default=None, help="Start after this job id (the last one of the previous page).")
@_JSON
@click.pass_context
def list_jobs(ctx: click.Context, limit: int, after: str | None, as_json: bool) -> None:
    page = _client(ctx).call("GET", "/fine_tuning/jobs", {"limit": limit, "after": after})
    if as_json:
        click.echo(json.dumps(page, indent=2, ensure_ascii=False))
        return
    if not page.get("data"):
        click.echo("No fine-tuning jobs yet; create one with the openai client (fine_tuning.jobs.create).")
        return
    for job in page["data"]:
        model = job.get("fine_tuned_model") or job.get("model")
        click.echo(f"{job['id']}  {job['status']:<16} {_when(job.get('created_at'))}  {model}")
    if page.get("has_more"):
        click.echo(f"... more: lfwrap jobs list --after {page['data'][-1]['id']}")


@jobs.command(
    help="Show one fine-tuning job.",
    epilog="""\b
Examples:
  $ lfwrap jobs show ftjob-abc123
  $ lfwrap jobs show ftjob-abc123 --json
""",
)
@click.argument("job_id")
@_JSON
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    job = _client(ctx).call("GET", f"/fine_tuning/jobs/{job_id}")
    if as_json:
        click.echo(json.dumps(job, indent=2, ensure_ascii=False))
        return
    rows = [
        ("id", job.get("id")),
        ("status", job.get("status")),
        ("model", job.get("model")),
        ("fine-tuned model", job.get("fine_tuned_model") or "-"),
        ("training file", job.get("training_file")),
        ("hyperparameters", json.dumps(job.get("hyperparameters"))),
        ("trained tokens", job.get("trained_tokens") or "-"),
        ("created", _when(job.get("created_at"))),
        ("finished", _when(job.get("finished_at"))),
    ]
    if job.get("error"):
        rows.append(("error", f"{job['error'].get('code')}: {job['error'].get('message')}"))
    for name, value in rows:
        click.echo(f"{name + ':':<18}{value}")


@jobs.command(
    help="Show a job's events (state changes and training metrics), oldest first.",
    epilog="""\b
Examples:
  $ lfwrap jobs events ftjob-abc123
  $ lfwrap jobs events ftjob-abc123 --limit 100 --json
""",
)
@click.argument("job_id")
@click.option(
    "--limit",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="How many of the newest events.",
)
@_JSON
@click.pass_context
def events(ctx: click.Context, job_id: str, limit: int, as_json: bool) -> None:
    page = _client(ctx).call("GET", f"/fine_tuning/jobs/{job_id}/events", {"limit": limit})
    if as_json:
        click.echo(json.dumps(page, indent=2, ensure_ascii=False))
        return
    for event in reversed(page.get("data", [])):
        click.echo(
            f"{_when(event.get('created_at'))}  {event.get('level', 'info'):<5} {event.get('message')}"
        )


@jobs.command(
    help="Cancel a queued or running job (its training process is stopped).",
    epilog="""\b
Examples:
  $ lfwrap jobs cancel ftjob-abc123
""",
)
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    job = _client(ctx).call("POST", f"/fine_tuning/jobs/{job_id}/cancel")
    click.echo(f"Job {job.get('id', job_id)} is {job.get('status')}.")
