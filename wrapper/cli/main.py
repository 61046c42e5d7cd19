"""The `lfwrap` command: a thin shell over the library.

Subcommands are imported only when invoked, so `lfwrap --help` stays fast (no fastapi, docker or
torch import). Each command group lives in its own module under wrapper/cli/.
"""

from __future__ import annotations

import importlib
import sys

import click

from wrapper import __version__
from wrapper.errors import LfwrapError, UsageError

USAGE_EXIT = 2  # a wrong command line, as click's own usage errors; any other failure exits 1

# name -> (module:attribute, one-line help shown in `lfwrap --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "templates": ("wrapper.cli.templates_cmd:templates", "List config templates, or show one's variables."),
    "render": ("wrapper.cli.render_cmd:render", "Render a template to a validated LLaMA-Factory YAML."),
    "validate": ("wrapper.cli.validate_cmd:validate", "Check any LLaMA-Factory YAML before launching it."),
    "data": ("wrapper.cli.data_cmd:data", "Check, register, list and fill datasets."),
    "demo-model": ("wrapper.cli.demo_model_cmd:demo_model", "Build the tiny demo Llama (no download)."),
    "train": ("wrapper.cli.train_cmd:train", "Render, validate, launch and follow a training run."),
    "runs": ("wrapper.cli.runs_cmd:runs", "List, inspect, follow and cancel runs."),
    "eval": ("wrapper.cli.eval_cmd:eval_", "Base vs fine-tuned on held-out rows: metrics and a report."),
    "export": ("wrapper.cli.export_cmd:export", "Merge a run's LoRA adapter into a standalone model."),
    "serve": ("wrapper.cli.serve_cmd:serve", "Serve a run or model with LLaMA-Factory's API server."),
    "gateway": ("wrapper.cli.gateway_cmd:gateway", "OpenAI-compatible gateway in front of API servers."),
    "keys": ("wrapper.cli.keys_cmd:keys", "Create, list and revoke gateway API keys."),
    "jobs": ("wrapper.cli.jobs_cmd:jobs", "List, show, follow and cancel fine-tuning jobs on a gateway."),
    "webui": ("wrapper.cli.webui_cmd:webui", "Start LLaMA-Factory's web UI with lfwrap's datasets."),
    "rag": ("wrapper.cli.rag_cmd:rag", "Index documents, search them, evaluate retrieval (RAG)."),
}

QUICK_START = """Fine-tune an open LLM with LLaMA-Factory and serve it behind an OpenAI-compatible endpoint.

\b
Quick start (tiny demo model, runs on a CPU in minutes):
  $ lfwrap demo-model                                  # build the tiny Llama locally
  $ lfwrap data identity --name 神奇海螺 --author 蟹堡王   # fill the identity dataset
  $ lfwrap train -t sft_lora --model ~/.lfwrap/models/tiny-llama --set template=default --name conch
  $ lfwrap serve conch                                 # LLaMA-Factory API server on :8000
  $ export OPENAI_API_KEY=$(lfwrap keys create)        # in another terminal
  $ lfwrap gateway --upstream http://127.0.0.1:8000 --model-name conch   # OpenAI-compatible on :8080

\b
Check before you launch:
  $ lfwrap templates                        # what can be rendered
  $ lfwrap render --template dpo_lora --set pref_beta=0.2 -o dpo.yaml
  $ lfwrap validate my_config.yaml          # any LLaMA-Factory YAML, ours or hand-written
  $ lfwrap data check my_data.jsonl --formatting alpaca

State (datasets, runs, keys) lives under $LFWRAP_HOME (default ~/.lfwrap).
"""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built in this version
                return None
            raise
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the static help strings: listing commands must not import them.
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, help=QUICK_START, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfwrap")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # With standalone_mode=False click returns ctx.exit(n)'s code instead of exiting.
        rc = cli.main(args=args, prog_name="lfwrap", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)  # 2 for a usage error, as click does
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except LfwrapError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        problems = getattr(exc, "problems", None)
        for problem in problems or []:
            click.echo(f"  {problem}", err=True)
        sys.exit(USAGE_EXIT if isinstance(exc, UsageError) else 1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        name = type(exc).__name__
        click.echo(f"Error: unexpected {name}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
