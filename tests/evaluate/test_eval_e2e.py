"""`lfwrap eval` end to end: the real LLaMA-Factory predict path on the tiny model (CPU), and its report
looked at in a real headless Chromium (Debian's package, driven by Playwright as in the web UI test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from fixtures_models import IDENTITY_ANSWER, IDENTITY_QUESTION, IdentityRun

from wrapper.launch import runs

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
OFFLINE = {"HF_HUB_OFFLINE": "1"}
KEYS = ["bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match", "eval_loss"]  # the exact shape


def _need_browser() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_identity_run_beats_its_base_and_the_report_renders(
    identity_run: IdentityRun, lfwrap, tmp_path: Path
) -> None:
    out = tmp_path / "report"  # --out: the session's identity run folder stays untouched
    env = {**OFFLINE, "LFWRAP_HOME": str(identity_run.home)}
    # Answers of the identity set are at most 94 tokens of the tiny tokenizer; 100 keeps the base quick.
    proc = lfwrap("eval", "identity", "--dataset", "identity", "--json", "--out", str(out),
                  "--max-new-tokens", "100", env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert list(metrics) == ["run", "dataset", "samples", "base", "tuned"]
    assert (metrics["run"], metrics["dataset"], metrics["samples"]) == ("identity", "identity", 22)
    base, tuned = metrics["base"], metrics["tuned"]
    assert list(base) == list(tuned) == KEYS
    # Trained on 2 of the 22 rows ("hi" and the question): those come back exactly, nothing does from base.
    assert base["exact_match"] == 0.0 and tuned["exact_match"] >= round(2 / 22 * 100, 2), metrics
    assert tuned["eval_loss"] < base["eval_loss"] and tuned["rouge-l"] > base["rouge-l"], metrics
    assert "fine-tuned: generating" in proc.stderr and "base: eval loss" in proc.stderr  # progress bars
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == metrics

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 22
    asked = next(row for row in rows if IDENTITY_QUESTION in row["prompt"])
    assert asked["tuned"].strip() == asked["reference"].strip() == IDENTITY_ANSWER and asked["tuned_exact"]
    # The configs are LLaMA-Factory's own: greedy, the run's chat template, the adapter for the tuned model.
    tuned_config = yaml.safe_load((out / "tuned-predict" / "config.yaml").read_text(encoding="utf-8"))
    assert (tuned_config["do_sample"], tuned_config["template"]) == (False, "default")
    assert tuned_config["do_predict"] is True and tuned_config["predict_with_generate"] is True
    assert tuned_config["adapter_name_or_path"] == str(identity_run.run_dir / "output")
    assert "adapter_name_or_path" not in yaml.safe_load((out / "base-predict" / "config.yaml").read_text())
    assert yaml.safe_load((out / "base-loss" / "config.yaml").read_text())["do_eval"] is True
    assert (out / "loss.png").stat().st_size > 5_000
    assert not (identity_run.run_dir / "eval").exists()

    _need_browser()
    _check_report_in_chromium(out / "report.html", rows)


def _check_report_in_chromium(page_path: Path, rows: list[dict]) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "eval_report.png"
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_path.as_uri(), wait_until="load")
            headers = page.locator("#metrics thead th").all_inner_texts()
            assert headers == ["metric", "base", "fine-tuned", "change"]
            metric_rows = page.locator("#metrics tbody tr")
            assert metric_rows.count() == 7
            exact = page.locator("#metrics tbody tr", has_text="Exact match")
            cells = exact.locator("td").all_inner_texts()
            assert float(cells[1]) > float(cells[0]) and cells[2].startswith("+"), cells
            assert "up" in (exact.locator("td").nth(2).get_attribute("class") or "")
            assert page.locator("#loss").evaluate("img => img.naturalWidth") > 100  # the inlined plot decoded
            assert page.locator("#samples thead th").all_inner_texts() == [
                "prompt", "reference", "base", "fine-tuned"
            ]
            assert page.locator("#samples tbody tr").count() == len(rows)
            asked = page.locator("#samples tbody tr", has_text=IDENTITY_QUESTION)
            answer = asked.locator("td").nth(3)
            assert answer.inner_text().strip() == IDENTITY_ANSWER
            assert answer.get_attribute("class") == "exact" and answer.locator("ins, del").count() == 0
            assert asked.locator("td").nth(2).locator("ins").count() > 0  # the base's differences are marked
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []  # nothing fetched
    assert shot.stat().st_size > 10_000


def test_val_size_run_logs_eval_loss_and_eval_reuses_its_split(lfwrap, tiny_model: Path,
                                                                 lfwrap_home: Path) -> None:
    proc = lfwrap("train", "-t", "sft_lora", "--model", str(tiny_model), "--dataset", "identity",
                  "--set", "template=default", "--set", "cutoff_len=128", "--set", "learning_rate=5e-3",
                  "--set", "per_device_train_batch_size=4", "--set", "gradient_accumulation_steps=1",
                  "--set", "max_steps=10", "--set", "logging_steps=5", "--set", "val_size=0.25",
                  "--name", "val", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "eval loss" in proc.stdout and "$ lfwrap eval val\n" in proc.stdout
    run_dir = lfwrap_home / "runs" / "val"
    log = [json.loads(line) for line in (run_dir / "output" / "trainer_log.jsonl").read_text().splitlines()]
    evaluated = [(row["current_steps"], row["eval_loss"]) for row in log if "eval_loss" in row]
    assert [step for step, _ in evaluated] == [5, 10]
    assert (run_dir / "output" / "training_eval_loss.png").is_file()  # plot_loss is on by default

    shown = lfwrap("runs", "show", "val", check=True).stdout
    assert f"eval loss  final {evaluated[-1][1]:.4f}" in shown and "steps      10/10 (100%)" in shown
    assert f"adapter    {run_dir / 'output'}" in shown and "$ lfwrap eval val\n" in shown

    proc = lfwrap("eval", "val", "--no-base", "--json", "--max-new-tokens", "16", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["base"] is None and metrics["samples"] == 6  # 25% of the 22 identity rows
    # The very rows training held out: the final adapter's loss on them is the last eval loss it logged.
    assert metrics["tuned"]["eval_loss"] == pytest.approx(evaluated[-1][1], abs=1e-4)
    (report,) = (run_dir / "eval").iterdir()
    assert sorted(path.name for path in report.iterdir() if path.name.startswith(("base", "tuned"))) == [
        "tuned-loss", "tuned-predict"
    ]  # --no-base ran no base pass
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "<th>base</th>" not in page and "the val_size=0.25 split held out in training" in page
    assert runs.read_meta(run_dir).status == "succeeded"
    assert f"eval       {report / 'report.html'}" in lfwrap("runs", "show", "val", check=True).stdout


def test_eval_with_rag_runs_the_fine_tuned_model_on_grounded_rows(
    identity_run: IdentityRun, lfwrap, tmp_path: Path
) -> None:
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.store import LocalTarget

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "who.md").write_text("# 你是谁\n\n请问你是谁？我是蟹堡王的神奇海螺。\n", encoding="utf-8")
    index, out = tmp_path / "who-index", tmp_path / "report"  # the session's identity home stays untouched
    env = {**OFFLINE, "LFWRAP_HOME": str(identity_run.home)}
    index_paths(LocalTarget(index), "who", [docs])  # a route or --rag-index may name an index folder
    proc = lfwrap("eval", "identity", "--dataset", "identity_demo", "--no-base", "--rag-index", str(index),
                  "--json", "--out", str(out), "--max-new-tokens", "100", env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert list(metrics) == ["run", "dataset", "samples", "base", "tuned", "tuned_rag", "rag"]
    assert metrics["samples"] == 2 and list(metrics["tuned_rag"]) == KEYS
    assert metrics["rag"] == {
        "index": str(index), "top_k": 4, "max_context_tokens": 1500, "rows_with_sources": 1
    }  # fmt: skip
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    asked = next(row for row in rows if IDENTITY_QUESTION in row["prompt"])
    assert asked["tuned"].strip() == IDENTITY_ANSWER and "tuned_rag" in asked
    assert asked["rag_sources"] == ["who.md#0"]
    grounded = yaml.safe_load((out / "tuned_rag-predict" / "config.yaml").read_text(encoding="utf-8"))
    assert grounded["adapter_name_or_path"] == str(identity_run.run_dir / "output")
    assert grounded["eval_dataset"] == "lfwrap_rag_eval" and grounded["dataset_dir"] == str(out / "rag-data")
    written = json.loads((out / "rag-data" / "lfwrap_rag_eval.json").read_text(encoding="utf-8"))
    assert "[who.md#0]" in next(r["system"] for r in written if r["instruction"] == IDENTITY_QUESTION)
    assert "fine-tuned + RAG: generating" in proc.stderr
