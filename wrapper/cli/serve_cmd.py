"""`lfwrap serve`: LLaMA-Factory's OpenAI-style API server for a run or a model."""

from __future__ import annotations

import click

from wrapper.cli.options import (
    backend_option,
    chat_template_option,
    host_option,
    model_name_option,
    model_option,
    port_option,
    renamed,
    set_option,
)
from wrapper.errors import UsageError

HELP = """Serve a finished run (base model + its LoRA adapter) or a model folder with LLaMA-Factory's
API server, wait until it answers, print its URL, and keep it running until Ctrl-C. A run trained in
LLaMA Board is named as `lfwrap runs` lists it (<model>/<finetuning type>/<run>).

The server speaks the OpenAI chat API (GET /v1/models, POST /v1/chat/completions) and serves one
model at a time; put `lfwrap gateway` in front of it for keys and more clients. On an address
other than loopback it refuses to start without --api-key. Request bodies are not logged (API_VERBOSE=0).

\b
Examples:
  $ lfwrap serve conch
  $ lfwrap serve conch --port 8001 --api-key sk-local --model-name conch
  $ lfwrap serve --model ~/.lfwrap/runs/conch/merged --chat-template default
  $ lfwrap serve conch --backend docker
  $ lfwrap serve Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00   # trained in LLaMA Board
  $ lfwrap serve conch --host 0.0.0.0 --api-key "$LF_API_KEY"     # off loopback: a key is required
"""


@click.command("serve", help=HELP)
@click.argument("run", required=False)
@model_option("Serve this model instead of a run")
@chat_template_option
@set_option
@backend_option
@host_option("127.0.0.1")
@port_option(8000)
@click.option("--api-key", envvar="LFWRAP_API_KEY", help="Require this bearer key (API_KEY).")
@model_name_option("The name callers send as `model`, which the server reports (API_MODEL_NAME).")
@renamed("--template", "--chat-template", "chat_template", metavar="NAME")
def serve(
    run: str | None,
    model: str | None,
    chat_template: str | None,
    sets: tuple[str, ...],
    backend: str,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
) -> None:
    from wrapper.launch.process import sigterm_as_interrupt
    from wrapper.launch.serve import serve_model, serve_run

    sigterm_as_interrupt()

    from wrapper.cli.gateway_cmd import is_loopback

    if not api_key and not is_loopback(host):
        raise UsageError(
            f"Refusing to serve on {host} without --api-key: anyone who reaches that address could use "
            "the model. Pass --api-key (or LFWRAP_API_KEY), or keep --host 127.0.0.1 and put "
            "`lfwrap gateway` in front."
        )
    if bool(run) == bool(model):
        raise UsageError("Give either a run name or --model PATH (not both); list runs with `lfwrap runs`.")
    options = dict(port=port, host=host, api_key=api_key, model_name=model_name, backend=backend)
    if run:
        from wrapper.launch.board import find_any_run

        find_any_run(run)  # an unknown name fails here, before the progress line
    click.echo("Starting LLaMA-Factory's API server (loading the model) ...", err=True)
    if run:
        server = serve_run(run, sets=sets, **options)
    else:
        server = serve_model(str(model), template=chat_template, sets=sets, **options)
    try:
        click.echo(f"Serving at {server.url}/v1 (log: {server.log_path}); Ctrl-C stops it.")
        server.wait()
        click.echo(f"The API server exited; see {server.log_path}.", err=True)
    except KeyboardInterrupt:
        click.echo("Stopping the API server ...", err=True)
    finally:
        server.stop()
