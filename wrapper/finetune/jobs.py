"""Fine-tuning jobs: the request checked, hyperparameters resolved, the run's config, cancel.

    job = create_job(store, settings, request_dict)        # status validating_files
    plan = plan_job_run(store, settings, job["id"])          # pure: the launcher's RunPlan
    cancel_job(store, job["id"])                             # stops the run's process group

method supervised → template sft_lora, dpo → dpo_lora. Each hyperparameter may be "auto": it resolves
to the base model's override of the same LLaMA-Factory key when there is one, else to a default. The
deprecated top-level `hyperparameters` is read as the method's. The job's run is a normal run folder
named after the job id, so `lfwrap runs` lists it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from wrapper.errors import FineTuneError, LfwrapError
from wrapper.finetune import objects
from wrapper.finetune.files import file_info, problem_text
from wrapper.finetune.rows import TAGS
from wrapper.finetune.settings import NAME_PATTERN, FineTuningSettings
from wrapper.finetune.store import Store
from wrapper.suggest import SENTENCE, did_you_mean

FILE_KEYS = ("kind", "rows", "bad_rows", "problems", "converted", "tools")
TEMPLATES = {"supervised": "sft_lora", "dpo": "dpo_lora"}
DEFAULT_LEARNING_RATE = {"supervised": 1.0e-4, "dpo": 5.0e-6}  # the templates' defaults
DATASET = "training"
EVAL_DATASET = "validation"
Auto = Literal["auto"]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    n_epochs: int | Auto | None = Field(None, union_mode="left_to_right")
    batch_size: int | Auto | None = Field(None, union_mode="left_to_right")
    learning_rate_multiplier: float | Auto | None = Field(None, union_mode="left_to_right")
    beta: float | Auto | None = Field(None, union_mode="left_to_right")


class MethodOptions(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo"]
    supervised: MethodOptions | None = None
    dpo: MethodOptions | None = None


class JobRequest(_Strict):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64, pattern=NAME_PATTERN)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)  # OpenAI's limits
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI, still accepted
    integrations: list[dict[str, Any]] | None = Field(None, max_length=0)


def _request(data: Any) -> JobRequest:
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(
            str(part) for part in error["loc"] if part not in ("int", "float", "literal['auto']")
        )
        message = "unknown parameter" if error["type"] == "extra_forbidden" else error["msg"]
        raise FineTuneError(
            f"Invalid job request: {param or 'body'}: {message}.", code="invalid_value", param=param or None
        ) from None


def _positive(value: float, name: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise FineTuneError(
            f"{name} must be a positive number, got {value}.",
            code="invalid_value",
            param=f"hyperparameters.{name}",
        )


def resolve(method: str, given: Hyperparameters, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter as a number: given, else the base model's override, else a default."""

    def pick(value: Any, key: str, default: Any) -> Any:
        return overrides.get(key, default) if value in (None, "auto") else value

    resolved: dict[str, Any] = {
        "n_epochs": pick(given.n_epochs, "num_train_epochs", 3),
        "batch_size": pick(given.batch_size, "per_device_train_batch_size", 1),
        "learning_rate_multiplier": float(pick(given.learning_rate_multiplier, "", 1.0)),
    }
    if method == "dpo":
        resolved["beta"] = float(pick(given.beta, "pref_beta", 0.1))
    elif given.beta not in (None, "auto"):
        raise FineTuneError(
            "beta applies to method dpo only.", code="invalid_value", param="hyperparameters.beta"
        )
    for name, value in resolved.items():
        _positive(float(value), name)
    return resolved


def _training_purpose(obj: dict[str, Any], param: str) -> None:
    if obj["purpose"] != "fine-tune":
        raise FineTuneError(
            f"File {obj['id']} has purpose {obj['purpose']!r}; upload training data with purpose "
            "'fine-tune'.",
            code=f"invalid_{param}",
            param=param,
        )


def create_job(store: Store, settings: FineTuningSettings, data: Any) -> dict[str, Any]:
    """Check a POST /v1/fine_tuning/jobs body and store the job (status validating_files)."""
    request = _request(data)
    base = settings.base_model(request.model)
    if base is None:
        names = [entry.name for entry in settings.base_models]
        hint = did_you_mean(request.model, names, SENTENCE)
        raise FineTuneError(
            f"Model {request.model!r} is not a base model of this gateway (fine_tuning.base_models: "
            f"{', '.join(names) or 'none configured'}).{hint}",
            code="model_not_available",
            param="model",
            status=404,
        )
    train_obj, train_info = file_info(store, request.training_file, "training_file")
    valid_info = None
    if request.validation_file:
        valid_obj, valid_info = file_info(store, request.validation_file, "validation_file")
        _training_purpose(valid_obj, "validation_file")
    _training_purpose(train_obj, "training_file")
    method_type = request.method.type if request.method else "supervised"
    options = getattr(request.method, method_type, None) if request.method else None
    given = (options.hyperparameters if options else None) or request.hyperparameters
    given = given or Hyperparameters.model_validate({})
    resolved = resolve(method_type, given, base.overrides)
    job_id = objects.new_id("ftjob")
    seed = request.seed if request.seed is not None else 42
    method = {"type": method_type, method_type: {"hyperparameters": resolved}}
    hyper = {key: resolved[key] for key in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    obj = objects.job_object(
        job_id,
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        method=method,
        hyperparameters=hyper,
        suffix=request.suffix,
        seed=seed,
        metadata=request.metadata,
        created_at=objects.now(),
    )
    private = {
        "train": {k: train_info.get(k) for k in FILE_KEYS},
        "valid": {k: valid_info.get(k) for k in FILE_KEYS} if valid_info else None,
        "last_step": 0,
    }
    store.add_job(obj, private)
    store.add_event(objects.event_object(job_id, f"Created fine-tuning job: {job_id}"))
    return obj


def validation_error(job: dict[str, Any], private: dict[str, Any]) -> dict[str, Any] | None:
    """The job's error object when its files cannot be trained on, naming the first bad row."""
    method = job["method"]["type"]
    wanted = "preference" if method == "dpo" else "chat"
    for param, info in (("training_file", private["train"]), ("validation_file", private.get("valid"))):
        if info is None:
            continue
        file_id = job[param]
        if info["problems"]:
            return objects.error_object(
                f"invalid_{param}",
                f"{param.replace('_', ' ').capitalize()} {file_id}: {problem_text(info)}",
                param,
            )
        if info["kind"] != wanted:
            return objects.error_object(
                f"invalid_{param}",
                f"{param.replace('_', ' ').capitalize()} {file_id} holds {info['kind']} rows; "
                f"method {method} needs {wanted} rows (see OpenAI's fine-tuning data formats).",
                param,
            )
    return None


def _write_dataset_dir(folder: Path, job: dict[str, Any], private: dict[str, Any]) -> None:
    ranking = job["method"]["type"] == "dpo"
    columns = {"messages": "messages"}
    if private["train"].get("tools") or (private.get("valid") or {}).get("tools"):
        columns["tools"] = "tools"  # only then: LLaMA-Factory reads a named column from every row
    if ranking:
        columns |= {"chosen": "chosen", "rejected": "rejected"}
    entry = {"formatting": "sharegpt", "ranking": ranking, "columns": columns, "tags": TAGS}
    info: dict[str, Any] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in ((DATASET, private["train"]), (EVAL_DATASET, private.get("valid"))):
        if part is None:
            continue
        target = folder / f"{name}.jsonl"
        target.write_bytes(Path(part["converted"]).read_bytes())
        info[name] = {"file_name": target.name, **entry}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def run_config(
    settings: FineTuningSettings, job: dict[str, Any], private: dict[str, Any], dataset_dir: Path
) -> tuple[str, dict[str, Any]]:
    """(template, typed config keys) of a job's run: computed defaults < base overrides < the job's."""
    method = job["method"]["type"]
    base = settings.base_model(job["model"])
    if base is None:
        raise FineTuneError(
            f"Base model {job['model']!r} is no longer configured.", code="model_not_available", param="model"
        )
    hyper = job["method"][method]["hyperparameters"]
    steps = math.ceil(private["train"]["rows"] / hyper["batch_size"]) * hyper["n_epochs"]
    keys: dict[str, Any] = {
        "logging_steps": 1,
        "save_steps": max(1, math.ceil(steps / 3)),  # about three checkpoints, as OpenAI keeps
        "include_num_input_tokens_seen": True,
        "plot_loss": True,
        **base.overrides,
        "model_name_or_path": base.model_path,
        "template": base.template,
        "dataset": DATASET,
        "dataset_dir": str(dataset_dir),
        "num_train_epochs": float(hyper["n_epochs"]),
        "per_device_train_batch_size": hyper["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": float(base.overrides.get("learning_rate", DEFAULT_LEARNING_RATE[method]))
        * hyper["learning_rate_multiplier"],
        "seed": job["seed"],
    }
    if method == "dpo":
        keys["pref_beta"] = hyper["beta"]
    if private.get("valid"):
        keys |= {
            "eval_dataset": EVAL_DATASET,
            "eval_strategy": "steps",
            "eval_steps": keys["save_steps"],
            "per_device_eval_batch_size": hyper["batch_size"],
        }
    return TEMPLATES[method], keys


def create_job_run(store: Store, settings: FineTuningSettings, job: dict[str, Any]) -> Path:
    """Write the job's data folder and its run folder (named after the job id), status queued."""
    from wrapper.launch.plan import materialize, plan_run
    from wrapper.render import render_template

    private = store.private(job["id"])
    dataset_dir = store.path.parent / "jobs" / job["id"]
    _write_dataset_dir(dataset_dir, job, private)
    template, keys = run_config(settings, job, private, dataset_dir)
    try:
        rendered = render_template(template, extra=keys)
        plan = plan_run(rendered.data, name=job["id"], template=template, backend=settings.backend)
        return materialize(plan)
    except LfwrapError as exc:
        problems = "; ".join(str(p) for p in getattr(exc, "problems", [])[:3])
        message = f"{exc} {problems}".strip()
        raise FineTuneError(message, code="invalid_configuration", param=None) from None


def get_job(store: Store, job_id: str) -> dict[str, Any]:
    job = store.job(job_id)
    if job is None:
        raise FineTuneError(
            f"No fine-tuning job with id {job_id!r}.", code="job_not_found", param="job_id", status=404
        )
    return job
