"""The numbers of an evaluation, read from what LLaMA-Factory wrote.

metrics.json, per model (exactly these keys; "base" is null with --no-base):
    bleu-4, rouge-1, rouge-2, rouge-l   LLaMA-Factory's own (predict_results.json), percentages 0-100
    exact_match                         percentage of answers equal to the reference (both stripped)
    eval_loss                           mean token cross-entropy of the reference answers (eval_results.json)
With --rag-index INDEX, also "tuned_rag" (the same keys: the fine-tuned model on the same rows, each grounded
in INDEX) and "rag": {index, top_k, max_context_tokens, rows_with_sources}; without it both are absent.
The report and the summary add the mean answer length (characters, stripped), from predictions.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wrapper.errors import LaunchError
from wrapper.evaluate.plan import EvalPlan

SCORES = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        message = f"LLaMA-Factory did not leave a readable {path.name} in {path.parent} ({exc})."
        raise LaunchError(message) from None


def read_predictions(folder: Path) -> list[dict[str, str]]:
    """generated_predictions.jsonl: one {"prompt", "predict", "label"} per row, in dataset order."""
    path = folder / "generated_predictions.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LaunchError(f"LLaMA-Factory wrote no {path.name} in {folder} ({exc}).") from None
    return [json.loads(line) for line in lines if line.strip()]


def exact(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def model_metrics(predict_dir: Path, loss_dir: Path) -> tuple[dict[str, float], list[dict[str, str]]]:
    """One model's metrics and its prediction rows."""
    scores = _read_json(predict_dir / "predict_results.json")
    loss = _read_json(loss_dir / "eval_results.json")
    rows = read_predictions(predict_dir)
    if not rows:
        raise LaunchError(f"LLaMA-Factory predicted no rows in {predict_dir}; is the dataset empty?")
    result = {key: round(float(scores[f"predict_{key}"]), 4) for key in SCORES}
    result["exact_match"] = round(100 * sum(exact(r["predict"], r["label"]) for r in rows) / len(rows), 4)
    result["eval_loss"] = round(float(loss["eval_loss"]), 6)
    return result, rows


def with_lengths(metrics: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Each model's metrics plus mean_answer_length, for the report and the summary."""
    figures: dict[str, dict[str, float] | None] = {}
    for model in ("base", "tuned", "tuned_rag"):
        if model == "tuned_rag" and model not in metrics:
            continue
        if metrics.get(model) is None:
            figures[model] = None
            continue
        length = sum(len(str(row[model]).strip()) for row in rows) / max(len(rows), 1)
        figures[model] = {**metrics[model], "mean_answer_length": round(length, 2)}
    return figures


def collect(plan: EvalPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """metrics.json's content and the joined prediction rows (prompt, reference, base, tuned)."""
    per_model: dict[str, dict[str, float]] = {}
    answers: dict[str, list[dict[str, str]]] = {}
    for model in plan.models:
        folders = plan.out / f"{model}-predict", plan.out / f"{model}-loss"
        per_model[model], answers[model] = model_metrics(*folders)
    tuned = answers["tuned"]
    base = answers.get("base")
    same_rows = base is None or [(r["prompt"], r["label"]) for r in base] == [
        (r["prompt"], r["label"]) for r in tuned
    ]
    if not same_rows:
        raise LaunchError(f"The base and fine-tuned predictions in {plan.out} are not on the same rows.")
    rows = []
    for index, row in enumerate(tuned):
        joined: dict[str, Any] = {"prompt": row["prompt"], "reference": row["label"]}
        if base is not None:
            joined["base"] = base[index]["predict"]
            joined["base_exact"] = exact(base[index]["predict"], row["label"])
        joined["tuned"] = row["predict"]
        joined["tuned_exact"] = exact(row["predict"], row["label"])
        if "tuned_rag" in answers:  # same rows in the same order; the prompts carry the context
            joined["tuned_rag"] = answers["tuned_rag"][index]["predict"]
            joined["tuned_rag_exact"] = exact(joined["tuned_rag"], row["label"])
            joined["rag_sources"] = list(plan.rag.sources[index]) if plan.rag else []
        rows.append(joined)
    metrics = {
        "run": plan.run,
        "dataset": plan.dataset,
        "samples": len(tuned),
        "base": per_model.get("base"),
        "tuned": per_model["tuned"],
    }
    if plan.rag is not None:
        rag_rows = answers["tuned_rag"]
        if [r["label"] for r in rag_rows] != [r["label"] for r in tuned]:
            raise LaunchError(
                f"The predictions with and without retrieval in {plan.out} are not on the same rows."
            )
        metrics["tuned_rag"] = per_model["tuned_rag"]
        metrics["rag"] = plan.rag.summary()
    return metrics, rows
