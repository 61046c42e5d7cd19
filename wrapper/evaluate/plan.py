"""What `lfwrap eval RUN` runs, worked out without writing anything.

For a finished training run: the rows to evaluate on (the run's own eval split, or --dataset), and for
each model (the base model unless --no-base, then the fine-tuned one) two LLaMA-Factory passes over
exactly those rows, both rendered from the `predict` template with the run's chat template:

    predict  do_predict + predict_with_generate, greedy: generated_predictions.jsonl and
             predict_results.json (BLEU-4, ROUGE-1/2/L from LLaMA-Factory's ComputeSimilarity)
    loss     do_eval without generation: eval_results.json with eval_loss, the mean token
             cross-entropy of the reference answers (LLaMA-Factory computes no loss while it generates)

With --rag-index INDEX, a third model, `tuned_rag`: the fine-tuned model on the same rows grounded in INDEX
(evaluate/rag.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from wrapper.errors import DatasetError, RunError, UsageError
from wrapper.evaluate.rag import RAG_DATASET, RAG_DIR, RagEval, plan_rag_rows
from wrapper.launch import board, runs
from wrapper.launch.board import tuned_adapters

EVAL_DIR = "eval"
MODELS = ("base", "tuned")
ADAPTER_TYPES = ("lora", "oft")
# Keys of the training config that shape prompts or how the model is loaded: kept for both models.
CARRIED = (
    "template", "cutoff_len", "trust_remote_code", "quantization_bit", "quantization_method",
    "bf16", "fp16", "default_system", "enable_thinking", "tool_format", "rope_scaling", "flash_attn",
    "per_device_eval_batch_size",
)  # fmt: skip
# Keys that decide which rows a val_size split holds: kept so the split is the one training made.
SPLIT_KEYS = ("dataset", "val_size", "seed", "max_samples", "mix_strategy", "interleave_probs")


@dataclass(frozen=True)
class Pass:
    model: str  # "base" | "tuned" | "tuned_rag"
    kind: str  # "predict" | "loss"
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.model}-{self.kind}"


@dataclass(frozen=True)
class EvalPlan:
    run: str
    run_dir: Path
    dataset: str  # the dataset name(s), as metrics.json reports them
    data_note: str  # where the rows come from, for the report
    out: Path  # the report folder
    models: tuple[str, ...]
    passes: tuple[Pass, ...]
    rag: RagEval | None = None  # --rag-index: the grounded rows, written into out/RAG_DIR at the start
    output_dir: Path | None = None  # the fine-tuned model's folder (its trainer_log.jsonl: the loss plot)

    def folder(self, item: Pass) -> Path:
        return Path(item.config["output_dir"])


def report_folder(run_dir: Path, out: Path | None) -> Path:
    """--out, or RUN/eval/<time> (a new name when two evaluations start in the same second)."""
    if out is not None:
        out = out.expanduser().resolve()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} already holds files; name a new or empty folder.")
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = run_dir / EVAL_DIR / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = run_dir / EVAL_DIR / f"{stamp}-{suffix}"
    return folder


def _registered(names: list[str]) -> Path:
    """lfwrap's dataset folder, after checking every name is a registered non-ranking dataset. Reads the
    entries its dataset_info.json will hold; running the plan writes that file (write_plan)."""
    from wrapper.datasets.registry import dataset_info_for
    from wrapper.home import user_datasets_dir
    from wrapper.suggest import did_you_mean

    folder = user_datasets_dir()
    info = dataset_info_for(folder) or {}
    for name in names:
        if name not in info:
            raise DatasetError(
                f"Dataset '{name}' is not registered{did_you_mean(name, list(info))}; list datasets with "
                "`lfwrap data list`, or register it with `lfwrap data add`."
            )
        if info[name].get("ranking"):
            raise DatasetError(
                f"Dataset '{name}' is a preference (ranking) set with chosen/rejected answers, not one "
                "reference answer per prompt; evaluate on an instruction dataset such as alpaca_demo."
            )
    return folder


def has_eval_split(run_dir: Path) -> bool:
    """Whether the run was trained with an eval split (eval_dataset or val_size) that eval can reuse."""
    from wrapper.launch.configfile import read_config

    try:
        config = read_config(run_dir)
    except OSError:
        return False
    return bool(config.get("eval_dataset")) or float(config.get("val_size") or 0) > 0


def data_keys(
    config: dict[str, Any], run: str, datasets: str | None, max_samples: int | None
) -> tuple[dict[str, Any], str, str]:
    """The predict config's data keys, the dataset name(s) and a note on where the rows come from."""
    from wrapper.validate import split_names

    if datasets is not None:
        names = split_names(datasets)
        if not names:
            raise UsageError("--dataset is empty; name registered datasets, e.g. --dataset identity.")
        folder = _registered(names)
        joined = ",".join(names)
        rows = f"the first {max_samples} rows of each" if max_samples else "all rows"
        note = f"{joined} (lfwrap's registered datasets, {rows})"
        return {"eval_dataset": joined, "dataset_dir": str(folder), "max_samples": max_samples}, joined, note
    dataset_dir = str(config.get("dataset_dir") or "")
    if config.get("eval_dataset"):
        joined = ",".join(split_names(config["eval_dataset"]))
        keys = {"eval_dataset": joined, "dataset_dir": dataset_dir, "max_samples": max_samples}
        return keys, joined, f"{joined} (the run's eval_dataset, copied into the run)"
    val_size = float(config.get("val_size") or 0)
    if val_size > 0:
        if max_samples is not None:
            raise UsageError(
                f"--max-samples cannot shrink run {run}'s val_size split without changing which rows it "
                "holds; drop --max-samples, or pick rows with --dataset NAME --max-samples N."
            )
        keys = {key: config[key] for key in SPLIT_KEYS if key in config}
        keys.update(eval_dataset=None, dataset_dir=dataset_dir)
        joined = ",".join(split_names(config.get("dataset")))
        note = f"{joined}: the val_size={config['val_size']} split held out in training (same seed)"
        return keys, joined, note
    raise UsageError(
        f"Run {run} has no eval split (it was trained without val_size or eval_dataset); name the rows "
        "to evaluate on with --dataset NAME (see `lfwrap data list`)."
    )


def model_keys(config: dict[str, Any], output_dir: str) -> dict[str, dict[str, Any]]:
    """model_name_or_path / adapter keys of the base and the fine-tuned model."""
    base = str(config["model_name_or_path"])
    method = str(config.get("finetuning_type") or "lora")
    if method in ADAPTER_TYPES:
        adapters = ",".join(tuned_adapters(config, output_dir))  # a run may continue from other adapters
        tuned = {"model_name_or_path": base, "adapter_name_or_path": adapters, "finetuning_type": method}
    else:  # full or freeze: output_dir is a whole model
        tuned = {"model_name_or_path": output_dir}
    return {"base": {"model_name_or_path": base}, "tuned": tuned}


def _check_model_files(run_dir: Path, base: str, output: Path) -> None:
    """Refuse before LLaMA-Factory's imports when the base model folder or the trained weights are gone
    (a relative folder is taken from the run folder, where training ran)."""
    run = run_dir.name
    if base.startswith(("/", "./", "../", "~")) and not (run_dir / Path(base).expanduser()).is_dir():
        raise RunError(
            f"Run {run!r} was trained on the model folder {base}, which no longer exists; put the model "
            "back there to evaluate it."
        )
    weights = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
    if not any((output / name).is_file() for name in weights) and not any(output.glob("model-*.safetensors")):
        raise RunError(f"Run {run!r} left no adapter or model weights in {output}; nothing to evaluate.")


def _trained(name: str) -> tuple[Path, dict[str, Any], str]:
    """(the folder eval works and reports in, the training config, the fine-tuned model's folder) of a
    finished run; a LLaMA Board run's reports go to its lfwrap side folder, never into its own."""
    from wrapper.launch.configfile import read_config

    if board.is_board_name(name):
        source = board.find_board_run(name)
        board.require_trained(source, "evaluated")
        return board.side_dir(source), board.board_config(source), str(source.folder)
    run_dir = runs.find_run(name)
    meta = runs.read_meta(run_dir)
    if meta.kind != "train":
        raise RunError(f"Run {name!r} is an export, not a training run; evaluate the run it was made from.")
    meta = runs.require_succeeded(run_dir, "evaluate")
    if meta.backend == "docker":
        raise RunError(
            f"Run {name!r} was trained with --backend docker, which lfwrap eval does not support yet; "
            "render a predict config with `lfwrap render --template predict` and run it in the container "
            "with `llamafactory-cli train`."
        )
    return run_dir, read_config(run_dir), meta.output_dir


def plan_eval(
    name: str,
    *,
    datasets: str | None = None,
    max_samples: int | None = None,
    base: bool = True,
    out: Path | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    rag: str | None = None,
    rag_top_k: int = 4,
) -> EvalPlan:
    """The passes `lfwrap eval` runs for run `name`; RunError / UsageError / DatasetError when it cannot."""
    from wrapper.render import render_template

    run_dir, config, output_dir = _trained(name)
    if config.get("stage") in ("rm", "ppo"):
        raise RunError(
            f"Run {name!r} trained stage {config['stage']}, whose model is scored or sampled rather than "
            "compared with reference answers; lfwrap eval covers sft, pt, dpo and kto runs."
        )
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"--max-samples {max_samples} must be at least 1.")
    _check_model_files(run_dir, str(config.get("model_name_or_path") or ""), Path(output_dir))
    if rag is not None and datasets is None:
        raise UsageError(
            "--rag-index grounds the rows of --dataset: name them, e.g. --dataset identity --rag-index INDEX."
        )
    data, dataset, note = data_keys(config, name, datasets, max_samples)
    folder = report_folder(run_dir, out)
    carried = {key: config[key] for key in CARRIED if key in config}
    carried.setdefault("template", None)  # none in training: LLaMA-Factory's fallback, not predict's default
    generate: dict[str, Any] = {}
    if max_new_tokens is not None:
        generate["max_new_tokens"] = max_new_tokens
    if batch_size is not None:
        generate["per_device_eval_batch_size"] = batch_size
    models: tuple[str, ...] = MODELS if base else ("tuned",)
    keys = model_keys(config, output_dir)
    grounded = None
    if rag is not None:
        from wrapper.validate import split_names

        names = split_names(datasets)
        grounded = plan_rag_rows(names, Path(data["dataset_dir"]), max_samples, rag, top_k=rag_top_k)
        models = (*models, "tuned_rag")
    passes: list[Pass] = []
    for model in models:
        for kind in ("predict", "loss"):
            output = str(folder / f"{model}-{kind}")
            if (
                model == "tuned_rag"
            ):  # the tuned pass on the grounded rows, written when the evaluation starts
                tuned = next(p.config for p in passes if p.name == f"tuned-{kind}")
                rows = {
                    "eval_dataset": RAG_DATASET,
                    "dataset_dir": str(folder / RAG_DIR),
                    "output_dir": output,
                }
                config = {k: v for k, v in tuned.items() if k != "max_samples"}
                passes.append(Pass(model, kind, {**config, **rows}))
                continue
            extra = {**carried, **data, **keys[model], **generate, "output_dir": output}
            if kind == "loss":
                extra.update(do_predict=False, predict_with_generate=False, do_eval=True)
            passes.append(Pass(model, kind, render_template("predict", extra=extra).data))
    return EvalPlan(name, run_dir, dataset, note, folder, models, tuple(passes), grounded, Path(output_dir))
