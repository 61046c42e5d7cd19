"""`lfwrap webui`: LLaMA-Factory's web UI with lfwrap's datasets in its dataset list."""

from __future__ import annotations

import os
import time
from typing import Literal

import click

from wrapper.cli.options import backend_option, gpus_option, host_option, image_option, port_option, renamed

RESYNC_SECONDS = 2.0

HELP = """Start LLaMA-Factory's web UI (LLaMA Board) with lfwrap's datasets and saves.

The bundled and registered datasets appear in the Train tab's dataset list, and trainings started
from the UI write under $LFWRAP_HOME/saves, where `lfwrap runs` lists them (and `serve`, `export` and
`eval` take them by that name). lfwrap's finished runs appear in LLaMA Board's checkpoint list for their
model (Custom for a local model folder): saves/<model>/<finetuning type>/<run> links to their adapter.
Waits until the UI answers, prints its URL, and runs until Ctrl-C, which stops it.

\b
--backend local   runs `llamafactory-cli webui` here (needs `pip install 'lfwrap[local]'`; CPU works)
--backend docker  runs the LLaMA-Factory image with all GPUs (--gpus), like `docker compose up webui`

\b
Examples:
  $ lfwrap webui                                  # http://127.0.0.1:7860/
  $ lfwrap webui --port 7861
  $ lfwrap webui --backend docker --host 0.0.0.0
  $ lfwrap webui --backend docker --image hiyouga/llamafactory:0.9.5 --gpus none
  $ lfwrap webui --gpus 1                         # CUDA_VISIBLE_DEVICES=1
"""


@click.command(help=HELP)
@backend_option
@port_option(7860)
@host_option("127.0.0.1")
@image_option
@gpus_option
@click.option(
    "--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the UI to answer."
)
@renamed("--no-gpus", "--gpus none", "gpus", flag_value="none")
def webui(backend: str, port: int, host: str, image: str | None, gpus: str | None, timeout: float) -> None:
    from wrapper import webui as lib
    from wrapper.errors import LaunchError, UsageError

    if image and backend != "docker":
        raise UsageError("--image only applies to --backend docker; add --backend docker or drop --image.")
    devices = _devices(gpus, backend)
    from wrapper.cli.gateway_cmd import is_loopback

    if not is_loopback(host):
        click.echo(
            f"warning: LLaMA Board has no authentication: anyone who reaches {host}:{port} can train, "
            "read datasets and use the models. Keep it on 127.0.0.1 (an SSH tunnel reaches it) unless "
            "the network is yours alone.",
            err=True,
        )
    if backend == "local":
        if devices != "all":  # the UI's trainings inherit it
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        ui = lib.start_local(host=host, port=port)
    else:
        ui = lib.start_docker(host=host, port=port, image=image or lib.DEFAULT_IMAGE, gpus=devices == "all")
    try:
        click.echo(f"Starting LLaMA-Factory's web UI ({backend}); waiting for {ui.url} ...", err=True)
        lib.wait_ready(ui, timeout=timeout)
        click.echo(f"Web UI ready: {ui.url}")
        click.echo("Press Ctrl-C to stop it.", err=True)
        shown: set[str] = set()
        while ui.alive():
            for note in set(lib.show_runs()) - shown:  # runs that finish meanwhile join the checkpoint list
                click.echo(f"note: {note}.", err=True)
                shown.add(note)
            time.sleep(RESYNC_SECONDS)
        where = f"; see {ui.log}" if ui.log else ""
        raise LaunchError(f"the web UI ({backend}) stopped on its own{where}.")
    except KeyboardInterrupt:
        click.echo("Stopping the web UI ...", err=True)
    finally:
        ui.stop()


def _devices(gpus: str | None, backend: str) -> Literal["all"] | list[str]:
    from wrapper.errors import UsageError
    from wrapper.launch.distributed import parse_gpus

    devices = parse_gpus(gpus) if gpus is not None else "all"
    if backend == "docker" and devices not in ("all", []):
        raise UsageError(
            f"--gpus {gpus}: the web UI's container takes all GPUs or none; use --gpus all or --gpus none, "
            "or --backend local to choose devices."
        )
    return devices
