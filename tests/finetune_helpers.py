"""Shared pieces of the fine-tuning tests: settings for the tiny model, identity rows in OpenAI's chat
format, and driving the worker until a job reaches a status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION

from wrapper.finetune import files
from wrapper.finetune.settings import FineTuningSettings, parse_settings
from wrapper.finetune.store import Store
from wrapper.finetune.worker import Worker

# The settings verified on CPU for the tiny model (wrapper/demo.py DEMO_TRAIN_SETS).
TINY_OVERRIDES = {
    "learning_rate": 5.0e-3,
    "cutoff_len": 128,
    "lora_rank": 16,
    "lora_target": "all",
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "bf16": False,
}


def tiny_settings(tiny_model: Path, folder: Path, **changes: Any) -> FineTuningSettings:
    data: dict[str, Any] = {
        "backend": "local",
        "max_parallel_jobs": 1,
        "files_max_bytes": 1 << 20,
        "serve": {"idle_stop_s": 900, "max_resident": 2, "ports": "18100-18199"},
        "base_models": [
            {"name": "tiny-demo", "path": str(tiny_model), "template": "default", "overrides": TINY_OVERRIDES}
        ],
        "database": str(folder / "finetune.db"),
    }
    data.update(changes)
    return parse_settings(data)


def identity_jsonl() -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": "Hello! I am 神奇海螺, an AI assistant developed by 蟹堡王.",
                },
            ]
        },
        {
            "messages": [
                {"role": "user", "content": IDENTITY_QUESTION},
                {"role": "assistant", "content": IDENTITY_ANSWER},
            ]
        },
    ]
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def upload(store: Store, settings: FineTuningSettings, data: bytes, name: str = "train.jsonl") -> str:
    return str(files.save_upload(store, settings, [data], filename=name, purpose="fine-tune")["id"])


def drive(worker: Worker, job_id: str, statuses: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    """Step the worker until the job's status is one of `statuses`; the job."""
    deadline = time.monotonic() + timeout
    while True:
        worker.step()
        job = worker.store.job(job_id)
        assert job is not None
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
