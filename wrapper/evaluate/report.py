"""The report folder's files: metrics.json, predictions.jsonl, loss.png and report.html.

report.html is one self-contained page (inline CSS, the plot as a data: URI, no script, nothing fetched).
Every text that comes from data or models is HTML-escaped by Jinja2's autoescaping; the difference
markers are built from escaped pieces only.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from wrapper.evaluate.metrics import with_lengths
from wrapper.evaluate.plan import EvalPlan
from wrapper.launch import runs
from wrapper.launch.progress import read_progress

SAMPLE_ROWS = 200  # rows shown on the page; predictions.jsonl holds them all
ROWS = (
    ("bleu-4", "BLEU-4", True),
    ("rouge-1", "ROUGE-1", True),
    ("rouge-2", "ROUGE-2", True),
    ("rouge-l", "ROUGE-L", True),
    ("exact_match", "Exact match (%)", True),
    ("eval_loss", "Eval loss", False),
    ("mean_answer_length", "Mean answer length (chars)", None),
)  # (key, label, higher is better; None: neither)
# ASCII words as one token, anything else (CJK characters, punctuation, spaces) one character each.
TOKEN = re.compile(r"[A-Za-z0-9_]+|\s+|.", re.DOTALL)


def marked(answer: str, reference: str) -> Markup:
    """`answer` as HTML with what differs from `reference` marked: <ins> text the reference lacks, a
    <del> marker where reference text is missing."""
    ours, theirs = TOKEN.findall(answer.strip()), TOKEN.findall(reference.strip())  # as exact match does
    out = []
    matcher = difflib.SequenceMatcher(a=theirs, b=ours, autojunk=False)
    for op, ref_start, ref_end, start, end in matcher.get_opcodes():
        text = "".join(ours[start:end])
        if op == "equal":
            out.append(str(escape(text)))
            continue
        if op in ("delete", "replace"):
            missing = "".join(theirs[ref_start:ref_end])
            out.append(f'<del title="{escape(missing)}">\u2038</del>')
        if text:
            out.append(f"<ins>{escape(text)}</ins>")
    return Markup("".join(out))


def write_loss_plot(run: str, output_dir: Path, target: Path) -> Path | None:
    """loss.png: training and eval loss against step; None when the run logged no loss."""
    progress = read_progress(output_dir / runs.TRAINER_LOG)
    train, evaluated = progress.losses, progress.eval_losses
    if not train and not evaluated:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=100)
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4")
    if evaluated:
        axes.plot(*zip(*evaluated, strict=True), label="eval loss", color="#d62728", marker="o")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"Run {run}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return target


def _change(key: str, base: dict[str, float] | None, tuned: dict[str, float]) -> tuple[str, str]:
    if base is None:
        return "", ""
    delta = tuned[key] - base[key]
    better = dict((k, b) for k, _, b in ROWS)[key]
    css = "" if better is None or abs(delta) < 1e-9 else ("up" if (delta > 0) == better else "down")
    return f"{delta:+.4g}", css


def render_html(
    plan: EvalPlan, metrics: dict[str, Any], rows: list[dict[str, Any]], plot: Path | None
) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    figures = with_lengths(metrics, rows)
    base, tuned = figures["base"], figures["tuned"]
    assert tuned is not None
    table = []
    for key, label, _ in ROWS:
        change, css = _change(key, base, tuned)
        table.append(
            {"label": label, "base": base and f"{base[key]:.4g}", "tuned": f"{tuned[key]:.4g}",
             "change": change, "css": css}
        )  # fmt: skip
    samples = []
    for row in rows[:SAMPLE_ROWS]:
        sample = {"prompt": row["prompt"], "reference": row["reference"]}
        for model in plan.models:
            sample[model] = marked(row[model], row["reference"])
            sample[f"{model}_exact"] = row[f"{model}_exact"]
        samples.append(sample)
    image = None
    if plot is not None:
        image = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode("ascii")
    return env.get_template("report.html.j2").render(
        plan=plan,
        metrics=metrics,
        table=table,
        samples=samples,
        shown=len(samples),
        image=image,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        configs=[plan.folder(item) / "config.yaml" for item in plan.passes],
    )


def write_report(plan: EvalPlan, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write metrics.json, predictions.jsonl, loss.png (when the run logged loss) and report.html."""
    out = plan.out
    text = json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"
    (out / "metrics.json").write_text(text, encoding="utf-8")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    output_dir = plan.output_dir or Path(runs.read_meta(plan.run_dir).output_dir)
    plot = write_loss_plot(plan.run, output_dir, out / "loss.png")
    page = out / "report.html"
    page.write_text(render_html(plan, metrics, rows, plot), encoding="utf-8")
    return page
