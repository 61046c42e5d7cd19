"""OpenAI-shaped objects of the fine-tuning API, ids, and list pagination.

    file        {id: file-..., object: "file", bytes, created_at, filename, purpose, status, ...}
    job         {id: ftjob-..., object: "fine_tuning.job", status, hyperparameters, method, ...}
    event       {id: ftevent-..., object: "fine_tuning.job.event", level, message, type, data, ...}
    checkpoint  {id: ftckpt-..., object: "fine_tuning.job.checkpoint", step_number, metrics, ...}
    page        {object: "list", data: [...], has_more, first_id, last_id}

The store keeps the objects as these dicts, so a handler returns them as they are.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_LIMIT = 100


def new_id(prefix: str) -> str:
    """`prefix-` and 24 random base-62-ish characters (letters and digits only: safe as a run name)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(24))


def now() -> int:
    return int(time.time())


def file_object(
    file_id: str, *, filename: str, size: int, purpose: str, created_at: int, status: str = "processed"
) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": status,
        "status_details": None,
    }


def job_object(
    job_id: str,
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    method: dict[str, Any],
    hyperparameters: dict[str, Any],
    suffix: str | None,
    seed: int,
    metadata: dict[str, str] | None,
    created_at: int,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": created_at,
        "finished_at": None,
        "error": None,
        "fine_tuned_model": None,
        "model": model,
        "organization_id": "org-local",
        "training_file": training_file,
        "validation_file": validation_file,
        "result_files": [],
        "hyperparameters": hyperparameters,
        "method": method,
        "status": "validating_files",
        "trained_tokens": None,
        "seed": seed,
        "estimated_finish": None,
        "integrations": [],
        "metadata": metadata,
        "user_provided_suffix": suffix,
    }


def error_object(code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


def event_object(
    job_id: str, message: str, *, level: str = "info", type: str = "message", data: Any = None
) -> dict[str, Any]:
    return {
        "id": new_id("ftevent"),
        "object": "fine_tuning.job.event",
        "created_at": now(),
        "level": level,
        "message": message,
        "type": type,
        "data": data if data is not None else {},
        "fine_tuning_job_id": job_id,
    }


def checkpoint_object(
    job_id: str, *, step: int, metrics: dict[str, Any], model: str, created_at: int
) -> dict[str, Any]:
    return {
        "id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",  # stable: the same folder, the same id
        "object": "fine_tuning.job.checkpoint",
        "created_at": created_at,
        "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}",
        "fine_tuning_job_id": job_id,
        "metrics": metrics,
        "step_number": step,
    }


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """`ft:<base>:<suffix>:<job id>` (the suffix part stays empty without a suffix, as OpenAI's does)."""
    return f"ft:{base}:{suffix or ''}:{job_id}"


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A list object from up to limit+1 items (the extra one only tells has_more)."""
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": len(items) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def check_limit(limit: int | None, default: int = 20) -> int:
    from wrapper.errors import FineTuneError

    if limit is None:
        return default
    if not 1 <= limit <= MAX_LIMIT:
        raise FineTuneError(
            f"limit must be between 1 and {MAX_LIMIT}, got {limit}.", code="invalid_limit", param="limit"
        )
    return limit
