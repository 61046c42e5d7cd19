"""Render the files docker-compose.yml mounts into LLaMA-Factory's containers (working dir /app).

    data/dataset_info.json  LLaMA Board's data folder (/app/data): the datasets lfwrap knows; bundled
                            ones under data/bundled/ (compose mounts ./datasets there), user ones
                            copied to data/user/
    train.yaml              the `train` service's config (sft_lora), writing to saves/ (= ./outputs)
    infer.yaml              the `api` service's config: the base model plus the adapter train.yaml produces

The committed copies in compose/ are this script's output on a fresh $LFWRAP_HOME (a test keeps them so).
After `lfwrap data identity ...` or with other settings, render your own and point .env at them:

    python compose/render.py --out my-stack --set num_train_epochs=5 --set learning_rate=2e-4
    # .env: LFWRAP_DATA_DIR=./my-stack/data LFWRAP_TRAIN_CONFIG=./my-stack/train.yaml
    #       LFWRAP_INFER_CONFIG=./my-stack/infer.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from wrapper.errors import LfwrapError
from wrapper.render import render_template
from wrapper.webui import export_data_dir

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_CHAT_TEMPLATE = "qwen"
DEFAULT_RUN = "lfwrap_sft"
HEADER = "# Rendered by `python compose/render.py` for docker-compose.yml; paths are relative to /app.\n"


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def output_dir(model: str, run: str) -> str:
    # LLaMA Board's layout, saves/<model name>/<finetuning type>/<run>, so its Train tab can resume it.
    return f"saves/{model.rstrip('/').split('/')[-1]}/lora/{run}"


def render_stack(
    out: Path,
    *,
    model: str = DEFAULT_MODEL,
    template: str = DEFAULT_CHAT_TEMPLATE,
    run: str = DEFAULT_RUN,
    sets: Sequence[str] = (),
) -> list[Path]:
    """Write data/, train.yaml and infer.yaml under `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    info = export_data_dir(out / "data")
    adapter = output_dir(model, run)
    # Paths are relative to the container's /app, so validate them from `out`, which mirrors it
    # (data/ is here; ./datasets is mounted at data/bundled in the container).
    with _cwd(out):
        train = render_template(
            "sft_lora",
            sets,
            extra={
                "model_name_or_path": model,
                "template": template,
                "dataset_dir": "data",
                "output_dir": adapter,
            },
        )
        infer = render_template(
            "infer",
            extra={"model_name_or_path": model, "template": template, "adapter_name_or_path": adapter},
        )
    written = [info]
    for name, rendered in (("train.yaml", train), ("infer.yaml", infer)):
        path = out / name
        path.write_text(HEADER + rendered.text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write (default: compose/)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model hub id or path inside the container"
    )
    parser.add_argument("--template", default=DEFAULT_CHAT_TEMPLATE, help="chat template of the base model")
    parser.add_argument(
        "--run", default=DEFAULT_RUN, help="run name: the adapter goes to saves/MODEL/lora/RUN"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training config override, as for `lfwrap render --set` (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        written = render_stack(
            args.out, model=args.model, template=args.template, run=args.run, sets=args.sets
        )
        for path in written:
            print(path)
    except LfwrapError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        for problem in getattr(exc, "problems", None) or []:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
