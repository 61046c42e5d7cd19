"""llamafactory-cli's view of a config's paths and of files that are not its configs at all.

llamafactory-cli resolves every relative path (dataset_dir, default `data`; media_dir, default
dataset_dir; output_dir; adapters; deepspeed; a local model) against the WORKING DIRECTORY, not the
config's folder: its README runs `llamafactory-cli train examples/...yaml` from the repo root.

    foreign_config(data)             # "an accelerate config ..." or None
    model_problems(data, base_dir)   # [(key, message)]: local model paths that do not exist, hub ids
                                     # missing from the cache while HF_HUB_OFFLINE=1
    absolute_paths(data, base_dir)   # the config with those relative paths made absolute
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DATASET_DIR = "data"
# Keys holding a local path (or a comma list of them) that llamafactory-cli opens relative to the cwd.
PATH_KEYS = ("output_dir", "deepspeed", "media_dir", "tokenized_path", "export_dir", "logging_dir")
MODEL_KEYS = ("model_name_or_path", "adapter_name_or_path", "reward_model", "ref_model")

# (use_cpu and fsdp_config are also TrainingArguments keys, so they don't count)
_ACCELERATE = {
    "compute_environment",
    "distributed_type",
    "num_processes",
    "machine_rank",
    "main_training_function",
    "downcast_bf16",
    "rdzv_backend",
    "same_network",
    "tpu_env",
    "num_machines",
    "deepspeed_config",
    "main_process_ip",
}
_DEEPSPEED = {
    "zero_optimization",
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "gradient_clipping",
    "zero_allow_untested_optimizer",
    "fp16",
    "bf16",
    "optimizer",
    "scheduler",
    "steps_per_print",
}
_V1 = {
    "model",
    "model_class",
    "peft_config",
    "dist_config",
    "kernel_config",
    "train_dataset",
    "micro_batch_size",
    "sample_backend",
    "quant_config",
    "eval_dataset_config",
    "batching_strategy",
}
_MCA = {
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "expert_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "context_parallel_size",
    "sequence_parallel",
    "use_distributed_optimizer",
    "overlap_param_gather",
    "overlap_grad_reduce",
    "moe_grouped_gemm",
    "moe_token_dispatcher_type",
    "recompute_granularity",
    "bias_activation_fusion",
    "apply_rope_fusion",
}


def foreign_config(data: dict[str, Any], file: str = "the file") -> str | None:
    """One sentence naming what a non-LLaMA-Factory config is and what to do with it, or None."""
    keys = set(data)
    if len(keys & _ACCELERATE) >= 2 and "stage" not in keys:
        return (
            f"{file} is an accelerate config (distributed_type, num_processes ...), not a LLaMA-Factory "
            "training config: pass it to `accelerate launch --config_file` next to a training YAML, and "
            "validate or train that YAML (lfwrap runs multi-GPU itself with --nproc-per-node/--deepspeed)"
        )
    if "zero_optimization" in keys or (len(keys & _DEEPSPEED) >= 3 and "stage" not in keys):
        return (
            f"{file} is a DeepSpeed config, not a LLaMA-Factory training config: name it in a training "
            "YAML as `deepspeed: path/to/it.json` (or use `lfwrap train --deepspeed z2`), "
            "and validate that YAML"
        )
    if len(keys & _V1) >= 2 and "model_name_or_path" not in keys:
        return (
            f"{file} is a LLaMA-Factory v1 config (model, peft_config, train_dataset ...), which only "
            "`USE_V1=1 llamafactory-cli` reads and lfwrap does not launch; write it with the v0 keys "
            "(model_name_or_path, stage, finetuning_type, dataset), e.g. from `lfwrap render -t sft_lora`"
        )
    if "task" in keys and keys & {"task_dir", "n_shot", "lang", "save_dir"} and "stage" not in keys:
        return (
            f"{file} is a benchmark config for `llamafactory-cli eval` (task, n_shot ...), which "
            "LLaMA-Factory 0.9.5 refuses (NotImplementedError); evaluate with a training config that sets "
            "do_predict: true, predict_with_generate: true and eval_dataset"
        )
    mca = sorted(keys & _MCA)
    if mca:
        return (
            f"{file} is a Megatron-Core (mca) config ({', '.join(mca[:3])} ...), which LLaMA-Factory runs "
            "only with USE_MCA=1 and the mcore_adapter package, and lfwrap does not launch; drop those keys "
            "to train with LLaMA-Factory's own trainer (lfwrap offers --deepspeed for large models)"
        )
    return None


def resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def dataset_dir(data: dict[str, Any], base_dir: Path) -> Path:
    return resolve(str(data.get("dataset_dir") or DEFAULT_DATASET_DIR), base_dir)


def media_dir(data: dict[str, Any], base_dir: Path) -> Path:
    value = data.get("media_dir")
    return resolve(str(value), base_dir) if value else dataset_dir(data, base_dir)


def looks_local(value: str) -> bool:
    """A path by its spelling (absolute, ./, ../, ~); anything else may be a hub id to transformers."""
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def in_hub_cache(repo_id: str, cache_dir: str | None = None) -> bool:
    """Whether a hub model has a snapshot in the local cache (huggingface_hub's models--org--name layout)."""
    root = Path(cache_dir).expanduser() if cache_dir else _hub_cache()
    snapshots = root / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_problems(data: dict[str, Any], base_dir: Path) -> list[tuple[str, str]]:
    """Local model/adapter/DeepSpeed paths that do not exist, and (HF_HUB_OFFLINE=1) hub ids not in the
    local cache (not judged when models come from ModelScope or Modelers: their ids differ)."""
    found: list[tuple[str, str]] = []
    other_hub = os.environ.get("USE_MODELSCOPE_HUB") or os.environ.get("USE_OPENMIND_HUB")
    for key in MODEL_KEYS if not other_hub else ():
        raw = data.get(key)
        if not isinstance(raw, str) or not raw.strip():
            continue
        for value in [part.strip() for part in raw.split(",")] if key == "adapter_name_or_path" else [raw]:
            local = resolve(value, base_dir)
            if local.exists():
                continue
            if looks_local(value):
                found.append(
                    (
                        key,
                        f"`{key}: {value}` is a local path ({local}) that does not exist; fix the path "
                        "(relative paths are taken from the working directory, as llamafactory-cli does)",
                    )
                )
            elif _offline() and not in_hub_cache(value, data.get("cache_dir")):
                found.append(
                    (
                        key,
                        f"`{key}: {value}` is a hub id that is not in the local cache, and HF_HUB_OFFLINE=1 "
                        "forbids downloading it; download it first or point at a local folder",
                    )
                )
    deepspeed = data.get("deepspeed")
    if isinstance(deepspeed, str) and deepspeed.strip() and not deepspeed.lstrip().startswith("{"):
        path = resolve(deepspeed, base_dir)
        if not path.is_file():
            found.append(
                (
                    "deepspeed",
                    f"`deepspeed: {deepspeed}`: no such file ({path}); relative paths are taken from the "
                    "working directory, as llamafactory-cli does",
                )
            )
    return found


def uses_media(data: dict[str, Any], base_dir: Path) -> bool:
    """Whether a dataset the config names has an images/videos/audios column in its dataset_info entry."""
    names: list[str] = []
    for key in ("dataset", "eval_dataset"):
        value = data.get(key)
        items = value if isinstance(value, list) else str(value or "").split(",")
        names += [str(item).strip() for item in items]
    try:
        info = json.loads((dataset_dir(data, base_dir) / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    entries = [info.get(str(name)) for name in names if name and isinstance(info, dict)]
    return any(
        isinstance(entry, dict) and set(entry.get("columns") or {}) & {"images", "videos", "audios"}
        for entry in entries
    )


def absolute_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The config with every relative local path made absolute against `base_dir` (the working directory
    llamafactory-cli would run in), so the run can be launched, resumed or served from anywhere."""
    out = dict(data)
    raw_dir = data.get("dataset_dir")
    if not (isinstance(raw_dir, str) and (raw_dir == "ONLINE" or raw_dir.startswith("REMOTE:"))):
        out["dataset_dir"] = str(dataset_dir(data, base_dir))
        if data.get("media_dir") or uses_media(data, base_dir):
            # media files stay where they are when the data files are copied into a run
            out["media_dir"] = str(media_dir(data, base_dir))
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value and not value.lstrip().startswith("{"):
            out[key] = str(resolve(value, base_dir))
    for key in MODEL_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            continue
        parts = [part.strip() for part in value.split(",")] if key == "adapter_name_or_path" else [value]
        fixed = [
            str(resolve(p, base_dir)) if resolve(p, base_dir).exists() or looks_local(p) else p for p in parts
        ]
        out[key] = ",".join(fixed)
    return out
