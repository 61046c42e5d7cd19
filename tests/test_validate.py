"""Config validation: each rule on a fixture file, with its message and line; `lfwrap validate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wrapper.errors import Problem
from wrapper.validate import check_config, config_kind, parse_yaml, validate_file, validate_text

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"
INFO = CONFIGS / "data" / "dataset_info.json"


@pytest.fixture(autouse=True)
def _run_from_the_fixtures(monkeypatch):
    """llamafactory-cli resolves relative paths against the working directory: run from the fixtures."""
    monkeypatch.chdir(CONFIGS)


def found(name: str) -> list[tuple[int | None, str, str]]:
    return [(p.line, p.severity, p.message) for p in validate_file(CONFIGS / name)]


@pytest.mark.parametrize("name", ["good_sft.yaml", "good_infer.yaml", "good_export.yaml"])
def test_good_configs_have_no_problem(name):
    assert validate_file(CONFIGS / name) == []


# (fixture, [(line, severity, message)]) — the documented messages, exactly.
MISMATCH = ("`Qwen/Qwen2.5-0.5B-Instruct` is registered with chat template `qwen`, not `llama3`; "
            "a model trained or served with another template tends to ramble")
KTO = "stage kto needs single answers labelled by a boolean `kto_tag` column (no ranking), but "
CASES = [
    ("unknown_key.yaml", [
        (9, "error", "unknown key `lerning_rate` (not an argument of LLaMA-Factory 0.9.5); "
         "did you mean `learning_rate`?"),
    ]),
    ("wrong_type.yaml", [
        (9, "error", "`num_train_epochs` must be a number, got str 'three'"),
        (10, "error", "`lora_rank` must be an integer, got float 8.5"),
        (11, "error", "`bf16` must be true or false, got str 'yes'"),
    ]),
    ("bad_choice.yaml", [
        (4, "error", "`finetuning_type` must be one of lora, oft, freeze, full; got 'lorra' "
         "(did you mean `lora`?)"),
        (9, "error", "`lr_scheduler_type` must be one of linear, cosine, cosine_with_restarts, polynomial, "
         "constant, constant_with_warmup, inverse_sqrt, reduce_lr_on_plateau, cosine_with_min_lr, "
         "cosine_warmup_with_min_lr, warmup_stable_decay, greedy; got 'cosin' (did you mean `cosine`?)"),
    ]),
    ("missing_train_keys.yaml", [
        (4, "warning", "no `finetuning_type`: LLaMA-Factory uses lora; name it"),
        (4, "warning", "no `output_dir`: LLaMA-Factory uses transformers' default `trainer_output` in the "
         "working directory; name it"),
        (4, "error", "missing `dataset`, required for training (stage sft)"),
    ]),
    ("ppo_no_reward.yaml", [
        (2, "error", "stage ppo cannot run with LLaMA-Factory 0.9.5: its PPO trainer needs trl<=0.9.6 while "
         "the package requires trl>=0.18, so it fails at launch; train preferences with the dpo_lora or "
         "kto_lora template (stage dpo or kto) instead"),
    ]),
    ("infer_no_template.yaml", [
        # llamafactory-cli chat/api accept it (the tokenizer's chat template, else `empty`): a warning only
        (1, "warning", "no `template`: LLaMA-Factory falls back to the tokenizer's chat template or `empty`; "
         "name the model's chat template"),
    ]),
    ("export_no_dir.yaml", [(1, "error", "missing `export_dir`, required to export a model")]),
    ("unknown_template.yaml", [(3, "error", "unknown chat template `llama33`; did you mean `llama3`?")]),
    ("missing_local_model.yaml", [
        (2, "error", "`model_name_or_path: ./models/not-there` is a local path "
         f"({CONFIGS / 'models/not-there'}) that does not exist; fix the path (relative paths are taken "
         "from the working directory, as llamafactory-cli does)"),
        (3, "error", "`adapter_name_or_path: /nonexistent/adapter` is a local path (/nonexistent/adapter) "
         "that does not exist; fix the path (relative paths are taken from the working directory, as "
         "llamafactory-cli does)"),
    ]),
    ("missing_dataset.yaml", [
        (5, "error", f"dataset `identiy` is not in {INFO}; did you mean `identity`?"),
        (5, "error", f"dataset `alpaca_zh` is not in {INFO}; it has: dpo_demo, identity, kto_demo"),
    ]),
    ("dpo_not_ranking.yaml", [
        (7, "error", "stage dpo needs a preference dataset (`ranking: true` with chosen/rejected columns), "
         "but `identity` is not one; use a ranking dataset such as dpo_demo"),
    ]),
    ("kto_no_tag.yaml", [
        (8, "error", KTO + "`identity` has no `kto_tag` column; use a dataset such as kto_demo"),
        (8, "error", KTO + "`dpo_demo` is a ranking dataset; use a dataset such as kto_demo"),
    ]),
    ("sft_on_ranking.yaml", [
        (5, "error", "`dpo_demo` is a ranking (preference) dataset, which LLaMA-Factory refuses for "
         "stage sft; use it with stage dpo or rm"),
    ]),
    ("template_mismatch.yaml", [(3, "warning", MISMATCH)]),
    ("not_mapping.yaml", [
        (1, "error", "the config must be a mapping of keys to values (`key: value` lines), not a list"),
    ]),
    ("syntax_error.yaml", [
        (4, "error", "YAML syntax error: expected ',' or ']', but got ':'; fix the syntax"),
    ]),
    ("duplicate_key.yaml", [
        (4, "error", "duplicate key `template` (first at line 2); LLaMA-Factory would use only the "
         "last value, keep one"),
        (4, "warning", MISMATCH),
    ]),
    ("python_tag.yaml", [
        (3, "error", "YAML tag `!!python/object/apply:os.system` refused: a config holds plain values "
         "only; remove the tag"),
    ]),
]


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[case[0] for case in CASES])
def test_each_rule_reports_its_message_and_line(name, expected):
    assert found(name) == expected


def test_every_bad_fixture_has_a_case():
    bad = {p.name for p in CONFIGS.glob("*.yaml")} - {"good_sft.yaml", "good_infer.yaml", "good_export.yaml"}
    assert bad == {name for name, _ in CASES}


def test_problems_print_as_file_line_severity_message():
    problem = validate_file(CONFIGS / "unknown_key.yaml")[0]
    assert str(problem).startswith(f"{CONFIGS / 'unknown_key.yaml'}:9: error: unknown key `lerning_rate`")


def test_python_tags_are_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"model_name_or_path: !!python/object/apply:os.system [\"touch {marker}\"]\ntemplate: qwen\n"
    problems = validate_text(text, file="x.yaml")
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [(1, "YAML tag `!!python/object/apply")]
    assert not marker.exists()


def test_nested_duplicates_and_anchors():
    text = "template: qwen\nmodel_name_or_path: m\nray_init_kwargs:\n  a: 1\n  a: 2\n"
    parsed = parse_yaml(text, "x.yaml")
    assert [(p.line, p.message) for p in parsed.problems] == [
        (5, "duplicate key `a` (first at line 4); LLaMA-Factory would use only the last value, keep one"),
    ]
    aliased = parse_yaml("base: &b {x: 1}\nother: *b\n", "y.yaml")
    assert aliased.problems == [] and aliased.data == {"base": {"x": 1}, "other": {"x": 1}}


def test_floats_are_read_like_omegaconf():
    parsed = parse_yaml("learning_rate: 5e-5\nrun_name: 2024-01-01\nlora_rank: 8\n")
    assert parsed.data == {"learning_rate": 5e-5, "run_name": "2024-01-01", "lora_rank": 8}
    assert parsed.lines == {"learning_rate": 1, "run_name": 2, "lora_rank": 3}


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert [(p.line, p.message) for p in validate_file(empty)] == [
        (1, "the file is empty; expected a mapping of LLaMA-Factory keys such as `stage: sft`"),
    ]
    missing = tmp_path / "nope.yaml"
    assert validate_file(missing) == [Problem("file not found; check the path", str(missing))]


def test_check_config_uses_text_for_lines_and_base_dir_for_dataset_dir(tmp_path):
    text = (CONFIGS / "missing_dataset.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    with_lines = check_config(data, text=text, file="cfg.yaml", base_dir=CONFIGS)
    assert [(p.file, p.line) for p in with_lines] == [("cfg.yaml", 5), ("cfg.yaml", 5)]
    # Relative dataset_dir is resolved against base_dir: elsewhere there is no dataset_info.json.
    elsewhere = check_config(data, file="cfg.yaml", base_dir=tmp_path)
    assert [p.message for p in elsewhere] == [
        f"no dataset_info.json in dataset_dir {tmp_path / 'data'}; relative paths are taken from the "
        "working directory, as llamafactory-cli does: run from the folder that holds it "
        "(`data/dataset_info.json`) or set `dataset_dir`",
    ]


def test_dataset_dir_defaults_to_data_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    config = tmp_path / "train.yaml"
    config.write_text(
        "model_name_or_path: m\nstage: sft\ndo_train: true\nfinetuning_type: lora\ntemplate: default\n"
        "output_dir: out\ndataset: mine,theirs\n",
        encoding="utf-8",
    )
    assert [(p.line, p.message) for p in validate_file(config)] == [
        (7, f"dataset `theirs` is not in {tmp_path / 'data' / 'dataset_info.json'}; it has: mine"),
    ]


def test_an_invalid_dataset_info_is_reported_with_its_own_lines(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{\n  "mine": {\n    "file_name": "a.json",\n'
                                                '    "format": "alpaca"\n  }\n}\n')
    data = {"model_name_or_path": "m", "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "template": "default", "output_dir": "o", "dataset": "mine", "dataset_dir": str(tmp_path)}
    problems = check_config(data, file="cfg.yaml")
    assert problems[0].file == "cfg.yaml" and problems[0].message.startswith(
        f"{tmp_path / 'dataset_info.json'} is invalid:")
    info_problems = [p for p in problems if p.file == str(tmp_path / "dataset_info.json")]
    assert len(info_problems) == 1 and info_problems[0].line == 4 and "formatting" in info_problems[0].message


def test_online_dataset_dir_skips_the_dataset_lookup():
    data = {"model_name_or_path": "m", "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "template": "default", "output_dir": "o", "dataset": "someone/hub_set", "dataset_dir": "ONLINE"}
    assert [(p.severity, p.message) for p in check_config(data)] == [
        ("warning", "dataset_dir ONLINE: the datasets are hub ids, which can't be checked offline")]


def test_comma_list_keys_also_take_yaml_lists():
    data = {"model_name_or_path": "m", "template": "default", "lora_target": ["q_proj", "v_proj"]}
    assert check_config(data) == []
    bad = check_config({**data, "template": ["default"]})
    assert [p.message for p in bad] == ["`template` must be a string or null, got list ['default']"]


def test_train_advisories_for_missing_do_train_and_template():
    data = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora", "output_dir": "o",
            "dataset": "x", "dataset_dir": "ONLINE"}
    assert [(p.severity, p.message.split(",")[0].split(":")[0]) for p in check_config(data)] == [
        ("warning", "`do_train` is not true"),
        ("warning", "no `template`"),
        ("warning", "dataset_dir ONLINE"),
    ]


def test_eval_only_configs_need_an_eval_dataset():
    data = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora", "output_dir": "o",
            "template": "default", "do_eval": True}
    assert [p.message for p in check_config(data)] == [
        "missing `eval_dataset` (or `dataset`), required to evaluate or predict",
    ]


def test_config_kind():
    assert config_kind({"stage": "sft"}) == "train"
    assert config_kind({"model_name_or_path": "m", "output_dir": "o"}) == "train"
    assert config_kind({"model_name_or_path": "m", "export_size": 2}) == "export"
    assert config_kind({"model_name_or_path": "m", "template": "qwen", "infer_backend": "vllm"}) == "infer"


def test_bundled_datasets_fit_their_stages():
    from wrapper.datasets.registry import prepare_dataset_dir

    dataset_dir = str(prepare_dataset_dir())
    base = {"model_name_or_path": "m", "do_train": True, "finetuning_type": "lora", "template": "default",
            "output_dir": "o", "dataset_dir": dataset_dir}
    for stage, dataset in [("sft", "identity"), ("sft", "alpaca_demo,sharegpt_demo"), ("pt", "alpaca_demo"),
                           ("dpo", "dpo_demo"), ("rm", "dpo_demo"), ("kto", "kto_demo")]:
        assert check_config({**base, "stage": stage, "dataset": dataset}) == [], (stage, dataset)
    wrong = check_config({**base, "stage": "rm", "dataset": "kto_demo"})
    assert [p.message.split("(")[0] for p in wrong] == ["stage rm needs a preference dataset "]


# --- the CLI -------------------------------------------------------------------------------------------


def test_cli_reports_all_problems_of_all_files_and_exits_1(lfwrap):
    proc = lfwrap("validate", str(CONFIGS / "good_sft.yaml"), str(CONFIGS / "wrong_type.yaml"),
                  str(CONFIGS / "template_mismatch.yaml"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        f"{CONFIGS / 'good_sft.yaml'}: ok",
        f"{CONFIGS / 'wrong_type.yaml'}:9: error: `num_train_epochs` must be a number, got str 'three'",
        f"{CONFIGS / 'wrong_type.yaml'}:10: error: `lora_rank` must be an integer, got float 8.5",
        f"{CONFIGS / 'wrong_type.yaml'}:11: error: `bf16` must be true or false, got str 'yes'",
        f"{CONFIGS / 'template_mismatch.yaml'}:3: warning: {MISMATCH}",
        "3 files checked: 3 errors, 1 warning (FAILED)",
    ]
    assert "Traceback" not in proc.stderr


def test_cli_warnings_alone_exit_0(lfwrap):
    proc = lfwrap("validate", "-q", str(CONFIGS / "template_mismatch.yaml"), str(CONFIGS / "good_infer.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 files checked: 0 errors, 1 warning (ok)"
    assert "good_infer.yaml: ok" not in proc.stdout


def test_cli_missing_file_is_one_error_line(lfwrap, tmp_path):
    proc = lfwrap("validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{tmp_path / 'nope.yaml'}: error: file not found; check the path",
        "1 file checked: 1 error, 0 warnings (FAILED)",
    ]


def test_cli_help_ends_with_examples(lfwrap):
    proc = lfwrap("validate", "--help")
    assert proc.returncode == 0
    assert proc.stdout.rstrip().splitlines()[-1].strip().startswith("$ lfwrap ")
    assert "  $ lfwrap validate my_config.yaml" in proc.stdout


# --- agreement with LLaMA-Factory's own argument parser -------------------------------------------------

PARSE_WITH_LLAMAFACTORY = """
import json, sys, yaml
from transformers import HfArgumentParser
from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS
out = {}
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    parser = HfArgumentParser(_TRAIN_ARGS if kind == "train" else _INFER_ARGS)
    try:
        parser.parse_dict(yaml.safe_load(open(path, encoding="utf-8")), allow_extra_keys=False)
        out[path] = "accepted"
    except Exception as exc:
        out[path] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.e2e
@pytest.mark.local
def test_llamafactory_agrees_with_the_schema_rules():
    """What validate passes, LLaMA-Factory's parser accepts; its schema errors, LLaMA-Factory refuses too."""
    cases = {"good_sft.yaml": "train", "good_infer.yaml": "infer", "good_export.yaml": "infer",
             "unknown_key.yaml": "train", "bad_choice.yaml": "train"}
    argv = [arg for name, kind in cases.items() for arg in (kind, str(CONFIGS / name))]
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_WITH_LLAMAFACTORY, *argv], capture_output=True, text=True,
        timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=CONFIGS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.splitlines()[-1])
    verdicts = {Path(path).name: verdict for path, verdict in parsed.items()}
    for name in ("good_sft.yaml", "good_infer.yaml", "good_export.yaml"):
        assert validate_file(CONFIGS / name) == [] and verdicts[name] == "accepted", (name, verdicts[name])
    assert "lerning_rate" in verdicts["unknown_key.yaml"]
    assert "unknown key `lerning_rate`" in validate_file(CONFIGS / "unknown_key.yaml")[0].message
    assert "cosin is not a valid SchedulerType" in verdicts["bad_choice.yaml"]
    ours = validate_file(CONFIGS / "bad_choice.yaml")
    assert any("`lr_scheduler_type` must be one of" in p.message for p in ours)
