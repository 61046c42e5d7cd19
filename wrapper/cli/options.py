"""The options several lfwrap commands share: each name has one meaning and one help text, declared here.

    -t/--template NAME      an lfwrap config template (`lfwrap templates`)        render, train
    --chat-template NAME    LLaMA-Factory's chat template, its `template:` key    serve
    --model MODEL           a model: hub id or local folder (model_name_or_path) train, serve, data check
    --model-name NAME       the name callers send as `model` (API_MODEL_NAME)     serve, gateway
    --set KEY=VALUE         a template variable or any LLaMA-Factory key          render, train, serve, export
    --backend local|docker  where LLaMA-Factory runs                              train, serve, export, webui
    --image IMAGE           the LLaMA-Factory image of --backend docker           train, webui
    --gpus all|none|IDS     the GPUs LLaMA-Factory may use                        train, webui
    -o/--out FILE|DIR       what the command writes                               render, export, eval,
                                                                                  demo-model
    --host ADDR, --port N   the address a server listens on                       serve, gateway, webui
    --dataset NAME[,NAME]   registered datasets                                   train, eval
    --no-data-check         skip reading the datasets' rows                       validate, train

Old spellings keep working for one release, hidden from --help, with a one-line note on stderr:
`serve --template`, `gateway --model`, `render --output`, `webui --no-gpus`, `eval --rag`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wrapper.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

SET_HELP = "Set a template variable or any LLaMA-Factory key, typed by the schema (repeatable)."
BACKEND_HELP = "Where LLaMA-Factory runs: here (local) or in its container image (docker)."
GPUS_HELP = (
    "GPUs to use: all, none (CPU) or ids such as 0,1 (CUDA_VISIBLE_DEVICES, or the container's GPU request)."
)
MODEL_HELP = "hub id or local model folder (model_name_or_path)"

set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)


def template_option(*, required: bool = False) -> Callable[[F], F]:
    """-t/--template: always an lfwrap config template, never a chat template (that is --chat-template)."""
    return click.option(
        "--template",
        "-t",
        "template",
        required=required,
        metavar="NAME",
        help="Config template (see `lfwrap templates`).",
    )


chat_template_option = click.option(
    "--chat-template",
    metavar="NAME",
    help="LLaMA-Factory chat template for --model (its `template:` key, e.g. default or qwen; "
    "default: the infer template's).",
)

dataset_option = click.option(
    "--dataset",
    "dataset",
    metavar="NAME[,NAME]",
    help="Registered dataset(s), comma-separated (see `lfwrap data list`).",
)

no_data_check_option = click.option(
    "--no-data-check", is_flag=True, help="Don't read the datasets' rows (for very large sets)."
)


def backend_option(command: F) -> F:
    option = click.option(
        "--backend",
        type=click.Choice(["local", "docker"]),
        default="local",
        show_default=True,
        help=BACKEND_HELP,
    )
    return option(command)


def image_option(command: F) -> F:
    option = click.option(
        "--image",
        metavar="IMAGE",
        default=None,
        help="--backend docker: the LLaMA-Factory image [default: hiyouga/llamafactory:latest].",
    )
    return option(command)


def gpus_option(command: F) -> F:
    """--gpus as text; `wrapper.launch.distributed.parse_gpus` turns it into "all" or a list of ids."""
    return click.option("--gpus", metavar="all|none|IDS", default=None, help=GPUS_HELP)(command)


def model_option(role: str, metavar: str = "MODEL") -> Callable[[F], F]:
    """--model: always a model (never a route or run name); `role` says what the command does with it."""
    return click.option("--model", "model", metavar=metavar, help=f"{role}: {MODEL_HELP}.")


def model_name_option(help: str) -> Callable[[F], F]:
    """--model-name: the name callers put in a request's `model` field."""
    return click.option("--model-name", "model_name", metavar="NAME", default=None, help=help)


def out_option(help: str, *, file: bool = False, dest: str = "out") -> Callable[[F], F]:
    """-o/--out: where the command writes what it makes (a file for render, a folder elsewhere)."""
    return click.option(
        "-o",
        "--out",
        dest,
        type=click.Path(dir_okay=not file, file_okay=file, path_type=Path),
        metavar="FILE" if file else "DIR",
        default=None,
        help=help,
    )


def host_option(default: str | None, help: str = "Address to listen on.") -> Callable[[F], F]:
    show = default is not None
    return click.option("--host", metavar="ADDR", default=default, show_default=show, help=help)


def port_option(default: int | None, help: str = "Port to listen on.", lowest: int = 1) -> Callable[[F], F]:
    return click.option(
        "--port",
        type=click.IntRange(lowest, 65535),
        metavar="PORT",
        default=default,
        show_default=default is not None,
        help=help,
    )


def renamed(old: str, new: str, dest: str, *, flag_value: Any = None, **kwargs: Any) -> Callable[[F], F]:
    """Accept `old`, the former spelling of `new`, for one more release.

    It is hidden from --help; using it prints "OLD is deprecated, use NEW" on stderr and hands its value
    to `dest`, the parameter of `new`. With `flag_value`, `old` is a flag that stands for that value
    (`--no-gpus` for `--gpus none`). Put it below @click.command.
    """
    hidden = f"renamed_{old.lstrip('-').replace('-', '_')}"

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **params: Any) -> Any:
            value = params.pop(hidden)
            if value not in (None, False, ()):
                click.echo(f"{old} is deprecated, use {new}.", err=True)
                if params.get(dest) not in (None, ()):
                    raise UsageError(f"{old} and {new} are the same option; give {new} only.")
                params[dest] = flag_value if flag_value is not None else value
            return command(*args, **params)

        if flag_value is not None:
            kwargs["is_flag"] = True
        option = click.option(old, hidden, hidden=True, **kwargs)
        return option(wrapper)  # type: ignore[return-value]

    return decorate
