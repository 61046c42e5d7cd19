"""lfwrap validate against llamafactory-cli's own verdict, on upstream's examples and variations of them.

Ground truth is LLaMA-Factory 0.9.5 itself, in process, from the same working directory (upstream's repo
layout): its argument parser (get_train_args / get_infer_args, what `llamafactory-cli train|chat|api|
export` run first), then for training configs its dataset loader (get_dataset: dataset_info entries,
the stage's ranking rule, every row converted and tokenized with the tiny model), and for stage ppo the
import of its PPO trainer (which refuses trl 0.24). The model is swapped for the tiny local one on both
sides, and `bf16` / `deepspeed` are left out: they depend on the hardware, not on the config.
Multimodal examples are compared on the parser only (the tiny model has no image processor).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from wrapper.validate import check_config, config_kind

UPSTREAM = Path(__file__).resolve().parent / "fixtures" / "upstream"
HARDWARE_KEYS = ("bf16", "fp16", "deepspeed")
NOT_LF = ("accelerate", "deepspeed", "megatron", "v1")  # not llamafactory-cli configs: covered elsewhere


def _base(name: str) -> dict[str, Any]:
    return yaml.safe_load((UPSTREAM / "examples" / name).read_text())


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [
        (str(path.relative_to(UPSTREAM / "examples")), yaml.safe_load(path.read_text()))
        for path in sorted((UPSTREAM / "examples").glob("*/*.yaml"))
        if path.parent.name not in NOT_LF
    ]
    sft = _base("train_lora/llama3_lora_sft.yaml")
    infer = _base("inference/llama3_lora_sft.yaml")
    drop = lambda data, *keys: {k: v for k, v in data.items() if k not in keys}  # noqa: E731
    cases += [
        ("sft without template", drop(sft, "template")),
        (
            "sft without stage, finetuning_type, output_dir",
            drop(sft, "stage", "finetuning_type", "output_dir"),
        ),
        ("inference without template", drop(infer, "template")),
        ("sft with a list of datasets", {**sft, "dataset": ["identity", "alpaca_en_demo"]}),
        ("sft with an eval_dataset", {**sft, "eval_dataset": "alpaca_en_demo", "eval_strategy": "steps"}),
        ("sft on an undefined dataset", {**sft, "dataset": "identity,alpaca_en_demoo"}),
        ("sft with an unknown key", {**sft, "lora_rnak": 8}),
        ("sft with an unknown template", {**sft, "template": "llama33"}),
        ("rm on a dataset without ranking", {**sft, "stage": "rm"}),
        ("dpo on a dataset without ranking", {**sft, "stage": "dpo"}),
        ("sft on a ranking dataset", {**sft, "dataset": "dpo_en_demo"}),
        ("pt on the pre-training text", {**sft, "stage": "pt", "dataset": "c4_demo"}),
        (
            "pt with a cutoff_len its text fills",
            {**sft, "stage": "pt", "dataset": "c4_demo", "cutoff_len": 16},
        ),
        ("pt without packing", {**sft, "stage": "pt", "dataset": "c4_demo", "packing": False}),
        ("sft on sharegpt with tools", {**sft, "dataset": "glaive_toolcall_en_demo"}),
        ("sft with dataset_dir set to the data folder", {**sft, "dataset_dir": "data"}),
        ("sft with a missing dataset_dir", {**sft, "dataset_dir": "nowhere"}),
        ("sft, do_train without a dataset", drop(sft, "dataset")),
    ]
    return cases


CASES = _cases()


def _swap(data: dict[str, Any], model: Path, out: Path) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if k not in HARDWARE_KEYS and k != "adapter_name_or_path"}
    data["model_name_or_path"] = str(model)
    if "output_dir" in data:
        data["output_dir"] = str(out)
    if "export_dir" in data:
        data["export_dir"] = str(out / "export")
    return data


def llamafactory_refusal(data: dict[str, Any]) -> str | None:
    """Why LLaMA-Factory refuses the config, or None when it accepts it."""
    from llamafactory.hparams.parser import get_infer_args, get_train_args

    try:
        if config_kind(data) != "train":
            get_infer_args(dict(data))
            return None
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(data))
        if finetuning_args.stage == "ppo":  # the check CustomPPOTrainer.__init__ makes first
            from transformers.utils.versions import require_version

            require_version("trl>=0.8.6,<=0.9.6")
        if model_args.image_max_pixels and "qwen2_vl" in str(data.get("template")):
            return None  # multimodal: the parser's verdict only
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.model import load_tokenizer

        tokenizer_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        stage = "rm" if finetuning_args.stage == "dpo" else finetuning_args.stage  # as its workflows call it
        get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)
        return None
    except (Exception, SystemExit) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.e2e
def test_validate_agrees_with_llamafactory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    pytest.importorskip("llamafactory")
    root = tmp_path / "LLaMA-Factory"
    shutil.copytree(UPSTREAM, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    verdicts = []
    for name, raw in CASES:
        data = _swap(raw, tiny_model, tmp_path / "out")
        problems = check_config(data, base_dir=root, data_check=True, use_cache=False)
        ours = not [p for p in problems if p.severity == "error"]
        refusal = llamafactory_refusal(data)
        verdicts.append(
            (name, ours, refusal is None, [str(p) for p in problems if p.severity == "error"], refusal)
        )
    disagree = [v for v in verdicts if v[1] != v[2]]
    print(
        f"validate agrees with llamafactory-cli on {len(verdicts) - len(disagree)} of {len(verdicts)} configs"
    )
    for verdict in disagree:
        print(verdict)
    assert disagree == []
    assert {verdict[1] for verdict in verdicts} == {True, False}  # both verdicts are exercised


def test_packing_counts_blocks_per_worker_shard_and_batch() -> None:
    from wrapper.datasets.lengths import packed_blocks

    assert packed_blocks([600] * 4, 1024, workers=1, batch_size=1000) == 2  # 2400 tokens in one batch
    assert packed_blocks([600] * 4, 1024, workers=4, batch_size=1000) == 0  # one row per shard
    assert packed_blocks([600] * 4, 1024, workers=2, batch_size=1000) == 2  # shards of 2 rows
    assert packed_blocks([600] * 4, 1024, workers=1, batch_size=1) == 0  # every batch packs alone
    assert packed_blocks([600] * 5, 1024, workers=2, batch_size=1000) == 2  # shards of 3 and 2 rows
    assert packed_blocks([], 1024, workers=16, batch_size=1000) == 0


def test_pt_with_too_little_text_for_one_block_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a hub model: no tokenizer, the bytes bound
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(
        '{"c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}}}'
    )
    (tmp_path / "data" / "c4.jsonl").write_text('{"text": "short"}\n' * 10)
    data = {
        "model_name_or_path": "org/model",
        "stage": "pt",
        "do_train": True,
        "dataset": "c4",
        "template": "default",
        "finetuning_type": "lora",
        "output_dir": "out",
        "cutoff_len": 64,
    }
    errors = [
        p.message
        for p in check_config(data, base_dir=tmp_path, data_check=True, use_cache=False)
        if p.severity == "error"
    ]
    assert errors == [
        "stage pt packs the text of c4 into blocks of cutoff_len 64 tokens, per preprocessing worker (1) and "
        'batch, but it holds at most 60 tokens in all, so LLaMA-Factory finds no full block ("Cannot find '
        'sufficient samples"); lower `cutoff_len` or `preprocessing_num_workers`, or add text'
    ]
    for fix in ({"cutoff_len": 60}, {"packing": False}):
        problems = check_config({**data, **fix}, base_dir=tmp_path, data_check=True, use_cache=False)
        assert not [p for p in problems if p.severity == "error"]
