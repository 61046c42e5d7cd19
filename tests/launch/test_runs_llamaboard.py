"""Runs trained in LLaMA Board (saves/<model name>/<finetuning type>/<run name>/ under $LFWRAP_HOME, where
`lfwrap webui` points its saves folder) are listed by `lfwrap runs`, read-only.

The folders are laid out as LLaMA-Factory 0.9.5's webui/runner.py writes them: training_args.yaml when
training starts, trainer_log.jsonl while it runs, the adapter files when it finishes."""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.launch.runs import llamaboard_runs


def _board_run(home: Path, model: str, run: str, steps: int, total: int, finished: bool) -> Path:
    folder = home / "saves" / model / "lora" / run
    folder.mkdir(parents=True)
    (folder / "training_args.yaml").write_text(
        f"model_name_or_path: org/{model}\nstage: sft\noutput_dir: {folder}\n"
    )
    lines = [
        {"current_steps": step, "total_steps": total, "loss": 2.0 / step, "percentage": 100.0 * step / total}
        for step in range(1, steps + 1)
    ]
    (folder / "trainer_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if finished:
        (folder / "adapter_config.json").write_text("{}")
    return folder


def test_llamaboard_runs_are_listed_beside_cli_runs(lfwrap_home: Path, lfwrap) -> None:
    assert llamaboard_runs() == []
    assert not (lfwrap_home / "saves").exists()  # listing creates nothing
    _board_run(lfwrap_home, "Qwen2.5-0.5B-Instruct", "train_2026-12-02-10-00-00", 4, 4, finished=True)
    _board_run(lfwrap_home, "Qwen2.5-0.5B-Instruct", "train_2026-12-02-11-00-00", 1, 4, finished=False)
    runs = llamaboard_runs()
    assert [(run.name, run.status) for run in runs] == [
        ("Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00", "succeeded"),
        ("Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-11-00-00", "incomplete"),
    ]
    out = lfwrap("runs", check=True).stdout
    rows = [line.split() for line in out.splitlines() if "llamaboard" in line]
    assert [row[:5] for row in rows] == [
        ["Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-10-00-00", "llamaboard", "succeeded", "4/4", "0.5000"],
        ["Qwen2.5-0.5B-Instruct/lora/train_2026-12-02-11-00-00", "llamaboard", "incomplete", "1/4", "2.0000"],
    ]
