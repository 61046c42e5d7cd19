"""`python -m wrapper.demo` (`make demo`): from nothing to a served, fine-tuned model on a CPU.

    1. build the tiny demo Llama                      (wrapper.demo_model)
    2. fill the identity set: 神奇海螺 by 蟹堡王        (wrapper.datasets.identity)
    3. train sft_lora with the settings known to work  (wrapper.launch.train)
    4. serve the run with LLaMA-Factory's API server   (wrapper.launch.serve), behind its own API key
    5. put the gateway in front of it with a fresh key  (wrapper.gateway), model name "conch"
    6. ask "请问你是谁" with the official openai client through the gateway and print the answer
    7. stop the gateway and the server

Each step is a function, so the pieces can be reused or rearranged.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NAME = "神奇海螺"
AUTHOR = "蟹堡王"
QUESTION = "请问你是谁"
DEMO_DATASET = "identity_demo"
DEMO_ROWS = ("hi", QUESTION)  # the 2-row identity subset the verified settings were measured on
MODEL_NAME = "conch"  # the name callers use at the gateway

# The settings verified on a 2-core CPU (../shared/DESIGN.md): ~20 s wall, exact identity answer after.
DEMO_TRAIN_SETS = (
    "template=default",
    "lora_rank=16",
    "lora_target=all",
    "cutoff_len=128",
    "per_device_train_batch_size=2",
    "gradient_accumulation_steps=1",
    "learning_rate=5e-3",
    "num_train_epochs=150",
    "lr_scheduler_type=linear",
    "warmup_steps=0",
    "logging_steps=10",
    "save_steps=1000",
    "bf16=false",
    "plot_loss=true",
)


def prepare_identity_demo(name: str = NAME, author: str = AUTHOR) -> str:
    """Fill the identity set (registered as `identity`) and register its 2-row subset; its dataset name."""
    from wrapper.datasets.identity import write_identity
    from wrapper.datasets.registry import RegistryEntry, register, registry_lock, write_owned
    from wrapper.home import user_datasets_dir

    full = write_identity(name, author)
    filled = json.loads(full.read_text(encoding="utf-8"))
    rows = [row for row in filled if row.get("instruction") in DEMO_ROWS]
    path = user_datasets_dir() / f"{DEMO_DATASET}.json"
    entry = RegistryEntry(
        file=path.name,
        formatting="alpaca",
        rows=len(rows),
        description=f"The {len(rows)} identity rows the demo trains on ({', '.join(DEMO_ROWS)}).",
    )
    with registry_lock():
        write_owned(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        register(DEMO_DATASET, entry)
    return DEMO_DATASET


def step_model() -> Path:
    from wrapper.demo_model import build_demo_model
    from wrapper.home import models_dir

    return build_demo_model(models_dir() / "tiny-llama")


def step_train(model: Path, dataset: str, name: str = "demo-conch") -> Path:
    from wrapper.cli.train_cmd import follow_in_terminal
    from wrapper.launch import runs
    from wrapper.launch import train as launcher
    from wrapper.launch.plan import materialize, plan_run
    from wrapper.render import render_template

    rendered = render_template(
        "sft_lora",
        DEMO_TRAIN_SETS,
        extra={
            "model_name_or_path": str(model),
            "dataset": dataset,
        },
    )
    run_dir = runs.run_path(name)
    if run_dir.exists():
        launcher.discard_run(run_dir)
    plan = plan_run(rendered.data, name=name, template="sft_lora", overrides=list(DEMO_TRAIN_SETS))
    run_dir = materialize(plan)
    follow_in_terminal(run_dir, launcher.launch(run_dir))
    return run_dir


def step_gateway(
    upstream_url: str, upstream_key: str, key_name: str = "demo", **route: Any
) -> tuple[Any, str]:
    """Start the gateway (free port, background thread) routing MODEL_NAME to the API server (`route`:
    more of its ModelRoute keys, e.g. tokenizer or rag), and create a caller key for it; returns the
    running gateway and the key."""
    from pydantic import SecretStr

    from wrapper.gateway.keys import KeyStore
    from wrapper.gateway.server import start_background
    from wrapper.gateway.settings import GatewaySettings, ModelRoute

    fields = {"name": MODEL_NAME, "upstream": upstream_url, "upstream_key": SecretStr(upstream_key), **route}
    settings = GatewaySettings(models=[ModelRoute.model_validate(fields)], port=0, access_log=False)
    _, key = KeyStore(settings.keys_path()).create(models=[MODEL_NAME], name=key_name)
    return start_background(settings), key


@contextmanager
def served(
    run_dir: Path, key_name: str, on_served: Callable[[str], None], **route: Any
) -> Iterator[tuple[str, str]]:
    """The run served by LLaMA-Factory's API server behind a key of its own (`on_served` sees its URL),
    the gateway in front of it: (the gateway's base URL, a caller key). Both stop on leaving."""
    import secrets

    from wrapper.launch.serve import serve_run

    upstream_key = secrets.token_urlsafe(24)
    with serve_run(run_dir.name, port=free_port(), api_key=upstream_key) as server:
        on_served(server.url)
        gateway, key = step_gateway(server.url, upstream_key, key_name, **route)
        with gateway:
            yield gateway.base_url, key


def run_steps(steps: Callable[[], None]) -> int:
    """Run a demo's steps offline; a problem ends it with one line on stderr and exit status 1."""
    from wrapper.errors import LfwrapError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        steps()
    except LfwrapError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def step_ask(base_url: str, key: str, question: str = QUESTION) -> str:
    """One chat completion with the official openai client (greedy decoding, as trained)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": question}],
        extra_body={"do_sample": False},
    )
    return reply.choices[0].message.content or ""


def free_port(preferred: int = 8000) -> int:
    """`preferred` when nothing listens there, else a free port the system picks."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def main() -> int:
    return run_steps(_steps)


def _steps() -> None:
    from wrapper.errors import LaunchError
    from wrapper.extras import require

    require("demo", "The demo", LaunchError)  # before minutes of training, not after
    print("1/6 building the tiny demo model ...", flush=True)
    model = step_model()
    print(f"2/6 filling the identity set with {NAME} / {AUTHOR} ...", flush=True)
    dataset = prepare_identity_demo()
    print("3/6 training sft_lora (LoRA, 150 epochs on the CPU) ...", flush=True)
    run_dir = step_train(model, dataset)
    print("4/6 starting LLaMA-Factory's API server ...", flush=True)

    def on_served(url: str) -> None:
        print(f"    LLaMA-Factory API server at {url}", flush=True)
        print("5/6 starting the gateway with a new key ...", flush=True)

    with served(run_dir, "demo", on_served, tokenizer=model) as (base_url, key):
        print(f"    gateway at {base_url} (model {MODEL_NAME!r})", flush=True)
        print(f"6/6 asking through the gateway with the openai client: {QUESTION}", flush=True)
        answer = step_ask(base_url, key)
    print(f"Answer: {answer}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
