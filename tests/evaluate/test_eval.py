"""`lfwrap eval`'s planning, refusals and report without LLaMA-Factory running (the e2e file runs it)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from wrapper.errors import DatasetError, RunError, UsageError
from wrapper.evaluate.plan import plan_eval
from wrapper.evaluate.report import marked, render_html
from wrapper.home import models_dir
from wrapper.launch import runs
from wrapper.launch.configfile import read_config, write_config
from wrapper.launch.plan import materialize, plan_run
from wrapper.launch.progress import TrainerLog, sparkline

CONFIG = {
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "dataset": "identity",
    "template": "default",
    "cutoff_len": 128,
    "output_dir": "saves/x",
}
HOSTILE = '<script>alert(1)</script><img src="http://example.com/x.png"> & 神奇海螺'


def _model() -> Path:
    folder = models_dir() / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _finished(name: str, status: str = "succeeded", **config: object) -> Path:
    """A run as training leaves it: the base model folder exists, output/ holds weights."""
    run_dir = materialize(plan_run(
        {**CONFIG, "model_name_or_path": str(_model()), **config}, name=name, template="sft_lora"
    ))
    (run_dir / "output").mkdir()
    (run_dir / "output" / "adapter_model.safetensors").write_bytes(b"")
    runs.update_meta(run_dir, status=status)
    return run_dir


def test_plan_for_an_adapter_run_on_a_registered_dataset(lfwrap_home: Path) -> None:
    run_dir = _finished("conch")
    plan = plan_eval("conch", datasets="identity,alpaca_demo", max_samples=5, max_new_tokens=32)
    assert [item.name for item in plan.passes] == ["base-predict", "base-loss", "tuned-predict", "tuned-loss"]
    assert plan.out.parent == run_dir / "eval" and not plan.out.exists()  # planning writes nothing
    tuned = plan.passes[2].config
    assert tuned["adapter_name_or_path"] == str(run_dir / "output")
    assert (tuned["do_predict"], tuned["predict_with_generate"], tuned["do_sample"]) == (True, True, False)
    assert (tuned["template"], tuned["cutoff_len"], tuned["max_new_tokens"]) == ("default", 128, 32)
    assert (tuned["eval_dataset"], tuned["max_samples"]) == ("identity,alpaca_demo", 5)
    assert tuned["dataset_dir"] == str(lfwrap_home / "datasets") and "dataset" not in tuned
    base = plan.passes[0].config
    assert "adapter_name_or_path" not in base and base["model_name_or_path"] == str(_model())
    loss = plan.passes[3].config
    assert (loss["do_eval"], loss["do_predict"], loss["predict_with_generate"]) == (True, False, False)
    assert {item.config["output_dir"] for item in plan.passes} == {
        str(plan.out / name) for name in ("base-predict", "base-loss", "tuned-predict", "tuned-loss")
    }
    assert [item.name for item in plan_eval("conch", datasets="identity", base=False).passes] == [
        "tuned-predict", "tuned-loss"
    ]


def _tree(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*")}


def test_planning_writes_nothing_running_writes_the_datasets_info(lfwrap_home: Path) -> None:
    from wrapper.evaluate.execute import write_plan

    _finished("pure")
    before = _tree(lfwrap_home)
    assert not (lfwrap_home / "datasets" / "dataset_info.json").exists()
    plan = plan_eval("pure", datasets="identity,alpaca_demo", max_samples=2)
    assert _tree(lfwrap_home) == before  # no dataset_info.json, no report folder: planning is pure
    with pytest.raises(DatasetError, match="'identiy' is not registered \\(did you mean 'identity'\\?\\)"):
        plan_eval("pure", datasets="identiy")
    assert _tree(lfwrap_home) == before
    write_plan(plan)  # running the plan: LLaMA-Factory reads dataset_info.json from dataset_dir
    info = json.loads((lfwrap_home / "datasets" / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"identity", "alpaca_demo"} <= set(info)
    assert plan.passes[0].config["dataset_dir"] == str(lfwrap_home / "datasets")
    assert (plan.out / "jobs.json").is_file()


def test_the_runs_own_split_is_reused(lfwrap_home: Path) -> None:
    _finished("split", val_size=0.2, seed=7, max_samples=100)
    plan = plan_eval("split")
    config = plan.passes[0].config
    assert (config["dataset"], config["val_size"], config["seed"], config["max_samples"]) == (
        "identity", 0.2, 7, 100
    )
    assert config["eval_dataset"] is None and config["dataset_dir"] == str(lfwrap_home / "runs" / "split")
    with pytest.raises(UsageError, match="cannot shrink run split's val_size split"):
        plan_eval("split", max_samples=3)
    _finished("held", eval_dataset="alpaca_demo")
    assert plan_eval("held").passes[0].config["eval_dataset"] == "alpaca_demo"


def test_a_run_without_chat_template_keeps_llamafactorys_fallback(lfwrap_home: Path) -> None:
    run_dir = _finished("plain")
    config = read_config(run_dir)
    del config["template"]
    write_config(run_dir, config)
    assert all(item.config["template"] is None for item in plan_eval("plain", datasets="identity").passes)


def test_full_finetune_is_compared_with_its_base(lfwrap_home: Path) -> None:
    run_dir = _finished("full", finetuning_type="full")
    plan = plan_eval("full", datasets="identity")
    assert plan.passes[2].config["model_name_or_path"] == str(run_dir / "output")
    assert "adapter_name_or_path" not in plan.passes[2].config
    assert plan.passes[0].config["model_name_or_path"] == str(_model())


@pytest.mark.parametrize(
    ("status", "args", "error", "message"),
    [
        ("failed", {"datasets": "identity"}, RunError, "Run 'bad' is failed, not succeeded; only a finished"),
        ("running", {"datasets": "identity"}, RunError, "Run 'bad' is running, not succeeded"),
        ("succeeded", {"datasets": "identiy"}, DatasetError, "Dataset 'identiy' is not registered (did you"),
        ("succeeded", {"datasets": "dpo_demo"}, DatasetError, "is a preference (ranking) set"),
        ("succeeded", {}, UsageError, "Run bad has no eval split"),
        ("succeeded", {"datasets": "identity", "max_samples": 0}, UsageError, "--max-samples 0 must be at"),
    ],
)
def test_refusals(lfwrap_home: Path, status: str, args: dict, error: type, message: str) -> None:
    _finished("bad", status)
    with pytest.raises(error, match=re.escape(message)):
        plan_eval("bad", **args)


def test_cli_refusals_are_one_sentence(lfwrap, lfwrap_home: Path, tmp_path: Path) -> None:
    _finished("bad", "failed")
    _finished("good")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for args, expected, code in [  # 2: a usage error (a wrong command line)
        (("bad", "--dataset", "identity"), "Error: Run 'bad' is failed, not succeeded", 1),
        (("good", "--dataset", "nope"), "Error: Dataset 'nope' is not registered", 1),
        (("nope", "--dataset", "identity"), "Error: No run named 'nope'", 1),
        (("good", "--dataset", "identity", "--out", str(tmp_path / "full")), "already holds files", 2),
    ]:
        proc = lfwrap("eval", *args)
        assert proc.returncode == code, proc.stdout
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (lfwrap_home / "runs" / "good" / "eval").exists()
    text = lfwrap("eval", "--help", check=True).stdout
    assert "$ lfwrap eval conch --dataset identity" in text


def test_missing_model_or_weights_are_refused_before_launch(lfwrap_home: Path) -> None:
    run_dir = _finished("gone", model_name_or_path=str(lfwrap_home / "moved-away"))
    with pytest.raises(RunError, match="trained on the model folder .*moved-away, which no longer exists"):
        plan_eval("gone", datasets="identity")
    run_dir = _finished("empty")
    (run_dir / "output" / "adapter_model.safetensors").unlink()
    with pytest.raises(RunError, match="left no adapter or model weights"):
        plan_eval("empty", datasets="identity")


def test_docker_runs_are_refused(lfwrap_home: Path) -> None:
    run_dir = _finished("boxed")
    runs.update_meta(run_dir, backend="docker")
    with pytest.raises(RunError, match="trained with --backend docker, which lfwrap eval does not support"):
        plan_eval("boxed", datasets="identity")


def test_marked_escapes_and_marks_differences() -> None:
    html = str(marked("Hello <b>there</b> 神奇", "Hello there 神奇海螺\n"))
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert html.startswith("Hello ") and "<ins>&lt;b&gt;</ins>" in html
    assert '<del title="海螺">' in html  # the missing tail is marked, its text in the tooltip
    assert str(marked("same answer ", "same answer\n")) == "same answer"  # compared stripped, as exact match


def test_report_escapes_every_user_text(lfwrap_home: Path) -> None:
    run_dir = _finished("conch")
    plan = plan_eval("conch", datasets="identity")
    scores = {"bleu-4": 1.0, "rouge-1": 2.0, "rouge-2": 0.0, "rouge-l": 1.5, "exact_match": 0.0,
              "eval_loss": 3.0}
    metrics = {"run": "conch", "dataset": "identity", "samples": 1, "base": scores,
               "tuned": {**scores, "exact_match": 100.0, "eval_loss": 1.0}}
    rows = [{"prompt": HOSTILE, "reference": HOSTILE, "base": "x", "base_exact": False,
             "tuned": HOSTILE, "tuned_exact": True}]
    page = render_html(replace(plan, data_note=HOSTILE), metrics, rows, None)
    assert "<script" not in page and "<img" not in page and "http://example.com" in page
    # prompt, reference, fine-tuned answer, the data note, and the base's missing-text tooltip
    assert page.count("&lt;script&gt;") == 5
    assert '<td class="num up">+100</td>' in page and '<td class="num up">-2</td>' in page
    chars = len(HOSTILE)
    lengths = f'<td class="num">1</td><td class="num">{chars}</td><td class="num ">+{chars - 1}</td>'
    assert f"<th>Mean answer length (chars)</th>{lengths}" in page
    assert "default-src 'none'" in page  # the page may fetch nothing even if something slipped through
    assert not (run_dir / "eval").exists()


def test_progress_keeps_loss_and_eval_loss_history(tmp_path: Path) -> None:
    path = tmp_path / "trainer_log.jsonl"
    rows = [
        {"current_steps": 5, "total_steps": 10, "loss": 3.0},
        {"current_steps": 5, "total_steps": 10, "eval_loss": 3.5},
        {"current_steps": 10, "total_steps": 10, "loss": 1.0},
        {"current_steps": 10, "total_steps": 10, "eval_loss": 2.5},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    progress = TrainerLog(path).poll()
    assert (progress.loss, progress.eval_loss) == (1.0, 2.5)
    assert progress.losses == [(5, 3.0), (10, 1.0)] and progress.eval_losses == [(5, 3.5), (10, 2.5)]


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0, 1.0]) == "▁▁"
    long = sparkline([float(i) for i in range(1000)], width=40)
    assert len(long) == 40 and long[0] == "▁" and long[-1] == "█"


def test_train_template_eval_keys(lfwrap_home: Path) -> None:
    from wrapper.render import render_template

    plain = render_template("sft_lora").data
    assert plain["plot_loss"] is True and "eval_strategy" not in plain and "val_size" not in plain
    split = render_template("sft_lora", ["val_size=0.1", "logging_steps=7"]).data
    assert (split["val_size"], split["eval_strategy"], split["eval_steps"]) == (0.1, "steps", 7)
    held = render_template("dpo_lora", ["eval_dataset=dpo_demo", "eval_steps=50"]).data
    assert (held["eval_dataset"], held["eval_steps"], held["eval_strategy"]) == ("dpo_demo", 50, "steps")
    assert "val_size" not in held and yaml.safe_load(render_template("sft_lora").text) == plain


def _menu_dataset() -> str:
    """A registered alpaca set of menu questions, one with a system prompt and one with history."""
    from wrapper.datasets.registry import RegistryEntry, register, registry_lock, write_owned
    from wrapper.home import user_datasets_dir

    rows = [
        {"instruction": "How much is a Krabby Patty?", "input": "", "output": "$2.99."},
        {"instruction": "蟹黄堡多少钱？", "input": "", "output": "2.99美元。", "system": "你是神奇海螺。"},
        {"instruction": "And at what time?", "input": "", "output": "9 am.",
         "history": [["When does the Krusty Krab open?", "Every day."]]},
        {"instruction": "zzzz qqqq", "input": "", "output": "?"},
    ]  # fmt: skip
    path = user_datasets_dir() / "menu_qa.json"
    with registry_lock():
        write_owned(path, json.dumps(rows, ensure_ascii=False))
        entry = RegistryEntry(file=path.name, formatting="alpaca", rows=len(rows), description="menu")
        register("menu_qa", entry)
    return "menu_qa"


@pytest.mark.rag
def test_plan_with_rag_grounds_the_same_rows_for_a_third_model(lfwrap_home: Path) -> None:
    from wrapper.evaluate.execute import write_plan
    from wrapper.home import bundled_rag_docs_dir
    from wrapper.rag.grounding import BEGIN
    from wrapper.rag.indexer import index_paths
    from wrapper.rag.store import LocalTarget, rag_dir

    _finished("conch")
    dataset = _menu_dataset()
    with pytest.raises(UsageError, match="--rag-index grounds the rows of --dataset"):
        plan_eval("conch", rag="krusty-docs")
    with pytest.raises(Exception, match="No retrieval index .*krusty-docs"):
        plan_eval("conch", datasets=dataset, rag="krusty-docs")
    index_paths(LocalTarget(rag_dir() / "krusty-docs"), "krusty-docs", [bundled_rag_docs_dir()])
    with pytest.raises(UsageError, match="alpaca-format datasets .* 'sharegpt_demo' is sharegpt"):
        plan_eval("conch", datasets="sharegpt_demo", rag="krusty-docs")
    plan = plan_eval("conch", datasets=dataset, rag="krusty-docs", rag_top_k=2, base=False)
    assert [item.name for item in plan.passes] == [
        "tuned-predict", "tuned-loss", "tuned_rag-predict", "tuned_rag-loss"
    ]
    assert not plan.out.exists()  # planning reads the index and the rows, writes nothing
    tuned, grounded = plan.passes[0].config, plan.passes[2].config
    assert grounded["adapter_name_or_path"] == tuned["adapter_name_or_path"]
    assert grounded["eval_dataset"] == "lfwrap_rag_eval"
    assert grounded["dataset_dir"] == str(plan.out / "rag-data")
    assert plan.rag is not None
    rows, sources = plan.rag.rows, plan.rag.sources
    assert [r["instruction"] for r in rows] == [
        "How much is a Krabby Patty?", "蟹黄堡多少钱？", "And at what time?", "zzzz qqqq"
    ]  # fmt: skip
    assert sources[0][0].startswith("menu.md#") and "$2.99" in rows[0]["system"]
    assert BEGIN in rows[0]["system"]
    assert rows[1]["system"].startswith("你是神奇海螺。\n\n") and sources[1][0].startswith("菜单.md#")
    assert rows[2]["history"] and sources[2] and rows[3]["system"] == "" and sources[3] == ()
    assert plan.rag.summary() == {"index": "krusty-docs", "top_k": 2, "max_context_tokens": 1500,
                                  "rows_with_sources": 3}  # fmt: skip
    write_plan(plan)
    written = json.loads((plan.out / "rag-data" / "lfwrap_rag_eval.json").read_text(encoding="utf-8"))
    assert written == list(rows)
    info = json.loads((plan.out / "rag-data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["lfwrap_rag_eval"]["columns"]["history"] == "history"
