"""`lfwrap serve`: LLaMA-Factory's OpenAI-style API server for a run or a model."""

from __future__ import annotations

import click

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
  $ lfwrap serve --model ~/.lfwrap/runs/conch/merged --template default
  $ lfwrap serve conch --backend docker
  $ lfwrap serve Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00   # trained in LLaMA Board
  $ lfwrap serve conch --host 0.0.0.0 --api-key "$LF_API_KEY"     # off loopback: a key is required
"""


@click.command("serve", help=HELP)
@click.argument("run", required=False)
@click.option("--model", "model", metavar="PATH", help="Serve this model folder or hub id instead of a run.")
@click.option("--template", metavar="NAME", help="Chat template for --model (default: the infer template's).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Infer template variable or key.")
@click.option("--backend", type=click.Choice(["local", "docker"]), default="local", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="LFWRAP_API_KEY", help="Require this bearer key (API_KEY).")
@click.option("--model-name", help="Model name the server reports (API_MODEL_NAME).")
def serve(
    run: str | None,
    model: str | None,
    template: str | None,
    sets: tuple[str, ...],
    backend: str,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
) -> None:
    from wrapper.launch.local import sigterm_as_interrupt
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
        server = serve_model(str(model), template=template, sets=sets, **options)
    try:
        click.echo(f"Serving at {server.url}/v1 (log: {server.log_path}); Ctrl-C stops it.")
        server.wait()
        click.echo(f"The API server exited; see {server.log_path}.", err=True)
    except KeyboardInterrupt:
        click.echo("Stopping the API server ...", err=True)
    finally:
        server.stop()
