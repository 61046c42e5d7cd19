"""Bring your own LLaMA-Factory config and data: upstream's examples, run from upstream's repo layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wrapper.datasets import verify
from wrapper.validate import validate_file

UPSTREAM = Path(__file__).resolve().parent / "fixtures" / "upstream"
TRAIN_LORA = sorted((UPSTREAM / "examples" / "train_lora").glob("*.yaml"))
OTHERS = [
    UPSTREAM / "examples" / name
    for name in (
        "train_full/llama3_full_sft.yaml",
        "inference/llama3_lora_sft.yaml",
        "merge_lora/llama3_lora_sft.yaml",
    )
]
PPO = "stage ppo cannot run with LLaMA-Factory 0.9.5"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the upstream layout (examples/, data/) as the working directory, hub offline off."""
    root = tmp_path / "LLaMA-Factory"
    shutil.copytree(UPSTREAM, root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return root


def check(path: Path, data_check: bool = True) -> list:
    """What `lfwrap validate` reports (it reads the rows of the datasets too)."""
    return validate_file(path, data_check=data_check)


def errors(path: Path, data_check: bool = True) -> list[str]:
    return [p.message for p in check(path, data_check) if p.severity == "error"]


@pytest.mark.parametrize("config", TRAIN_LORA, ids=[path.name for path in TRAIN_LORA])
def test_upstream_examples_validate_from_the_repo_root(repo: Path, config: Path) -> None:
    found = errors(Path("examples/train_lora") / config.name)
    if config.name == "llama3_lora_ppo.yaml":
        assert len(found) == 1 and found[0].startswith(PPO) and "dpo_lora or kto_lora" in found[0]
    elif config.name == "llama3_lora_eval.yaml":  # llamafactory-cli eval: NotImplementedError in 0.9.5
        assert len(found) == 1 and "is a benchmark config for `llamafactory-cli eval`" in found[0]
    else:
        assert found == []


@pytest.mark.parametrize("config", OTHERS, ids=[path.parent.name for path in OTHERS])
def test_upstream_full_inference_and_merge_examples_validate(repo: Path, config: Path) -> None:
    assert errors(config.relative_to(UPSTREAM)) == []


def test_relative_dataset_dir_is_taken_from_the_working_directory(repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo / "examples")  # not where llamafactory-cli would find data/
    found = errors(Path("train_lora/llama3_lora_sft.yaml"))
    expected = f"no dataset_info.json in dataset_dir {repo / 'examples' / 'data'}"
    assert len(found) == 1 and found[0].startswith(expected)
    (repo / "cfg.yaml").write_text(
        (repo / "examples/train_lora/llama3_lora_sft.yaml").read_text() + "dataset_dir: ../data\n"
    )
    monkeypatch.chdir(repo / "examples")
    assert errors(repo / "cfg.yaml") == []  # ../data from examples/ is the repo's data/


def test_remote_dataset_dir_and_hub_datasets_are_accepted_with_a_note(repo: Path) -> None:
    text = (repo / "examples/train_lora/llama3_lora_sft.yaml").read_text()
    (repo / "remote.yaml").write_text(text + "dataset_dir: REMOTE:llamafactory/demo_data\n")
    problems = check(repo / "remote.yaml")
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "dataset_dir REMOTE:llamafactory/demo_data: dataset_info.json comes from the hub repo "
         "llamafactory/demo_data, so its datasets can't be checked offline")
    ]
    (repo / "hub.yaml").write_text(text.replace("dataset: identity,alpaca_en_demo", "dataset: alpaca_en"))
    problems = check(repo / "hub.yaml")
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "dataset 'alpaca_en' is loaded from hub (llamafactory/alpaca_en); its rows can't be "
         "checked offline")
    ]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("examples/accelerate/fsdp_config.yaml", "is an accelerate config"),
        ("examples/deepspeed/ds_z3_config.json", "is a DeepSpeed config"),
        ("examples/v1/train_lora/train_lora_sft.yaml", "is a LLaMA-Factory v1 config"),
        ("examples/megatron/qwen3_moe_full.yaml", "is a Megatron-Core (mca) config"),
    ],
)
def test_configs_of_other_tools_are_named_in_one_sentence(repo: Path, path: str, named: str) -> None:
    problems = check(Path(path))
    assert len(problems) == 1 and f"{path} {named}" in problems[0].message, problems


def _break_a_row(repo: Path) -> None:
    data = repo / "data" / "alpaca_en_demo.json"
    rows = json.loads(data.read_text())
    rows.append({"instruction": "Name a colour.", "input": ""})  # no output: LLaMA-Factory drops it
    data.write_text(json.dumps(rows, indent=2))


def test_a_hand_registered_dataset_with_a_broken_row_is_refused_with_its_row(repo: Path, lfwrap_home) -> None:
    config = Path("examples/train_lora/llama3_lora_sft.yaml")
    assert errors(config) == []
    _break_a_row(repo)
    found = [p for p in check(config) if p.severity == "error"]
    assert found[0].message.startswith(
        f"dataset 'alpaca_en_demo' (alpaca): {repo / 'data' / 'alpaca_en_demo.json'} has 1 bad row(s) of 4"
    )
    assert found[0].line == 13  # the config's `dataset:` line
    assert (found[1].file, found[1].message) == (
        str(repo / "data" / "alpaca_en_demo.json"), "row 4 (line 17): 'output' missing")
    assert errors(config, data_check=False) == []  # the escape hatch
    # a small file's verdict is not cached: planning a usual run writes nothing
    cache = Path(os.environ["LFWRAP_CACHE_DIR"]) / "data-check.json"
    assert not cache.exists()
    rows = json.loads((repo / "data" / "alpaca_en_demo.json").read_text())[:3]
    (repo / "data" / "alpaca_en_demo.json").write_text(json.dumps(rows))
    assert errors(config) == []


def test_a_large_files_verdict_is_cached_and_a_changed_file_checked_again(repo: Path) -> None:
    config = Path("examples/train_lora/llama3_lora_sft.yaml")
    data = repo / "data" / "alpaca_en_demo.json"
    row = {"instruction": "Name a colour. " * 40, "input": "", "output": "Blue."}
    count = verify.CACHE_MIN_BYTES // len(json.dumps(row)) + 10
    data.write_text(json.dumps([row] * count + [{"instruction": "x", "input": ""}]))
    cache = Path(os.environ["LFWRAP_CACHE_DIR"]) / "data-check.json"
    assert any(f"row {count + 1} " in p.message and "'output' missing" in p.message for p in check(config))
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    assert any("'output' missing" in p.message for p in check(config))  # read back from the cache
    assert cache.stat().st_mtime_ns == stamp
    data.write_text(json.dumps([row] * count))  # changed: checked again
    assert errors(config) == []


def test_every_row_of_eval_dataset_and_media_files_are_checked(repo: Path) -> None:
    (repo / "data" / "mllm_demo_data" / "2.jpg").unlink()
    found = errors(Path("examples/train_lora/qwen2vl_lora_sft.yaml"))
    assert "row 2 (line 26): 'images[0]' file 'mllm_demo_data/2.jpg' not found under media_dir " \
           f"{repo / 'data'}" in found
    text = (repo / "examples/train_lora/llama3_lora_kto.yaml").read_text()
    (repo / "kto.yaml").write_text(text + "eval_dataset: kto_en_demo\n")
    rows = json.loads((repo / "data" / "kto_en_demo.json").read_text())
    rows[1]["label"] = "no"
    (repo / "data" / "kto_en_demo.json").write_text(json.dumps(rows, indent=1))
    found = errors(repo / "kto.yaml")
    assert "row 2 (line 15): 'label' expected true or false, got string \"no\"" in found


def test_missing_local_model_and_uncached_hub_model_offline(repo: Path, tmp_path, monkeypatch) -> None:
    text = (repo / "examples/train_lora/llama3_lora_sft.yaml").read_text()
    (repo / "local.yaml").write_text(text.replace("meta-llama/Meta-Llama-3-8B-Instruct", "~/no/such/model"))
    found = errors(repo / "local.yaml")
    assert found == [
        f"`model_name_or_path: ~/no/such/model` is a local path ({Path.home() / 'no/such/model'}) that "
        "does not exist; fix the path (relative paths are taken from the working directory, as "
        "llamafactory-cli does)"
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    config = Path("examples/train_lora/llama3_lora_sft.yaml")
    assert errors(config) == [
        "`model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct` is a hub id that is not in the local "
        "cache, and HF_HUB_OFFLINE=1 forbids downloading it; download it first or point at a local folder"
    ]
    snapshot = tmp_path / "hf" / "hub" / "models--meta-llama--Meta-Llama-3-8B-Instruct" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert errors(config) == []


@pytest.mark.parametrize(
    ("name", "assumed"),
    [
        ("alpaca_en_demo.json", "alpaca"),
        ("identity.json", "alpaca"),
        ("dpo_en_demo.json", "sharegpt + ranking"),
        ("glaive_toolcall_en_demo.json", "sharegpt"),
        ("kto_en_demo.json", "sharegpt + kto (kto_tag=label, messages=messages, role_tag=role"),
        ("mllm_demo.json", "openai"),
        ("c4_demo.jsonl", "pt (prompt=text)"),
    ],
)
def test_data_check_detects_each_format(lfwrap, name: str, assumed: str) -> None:
    proc = lfwrap("data", "check", str(UPSTREAM / "data" / name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"Assuming {assumed}"), first
    assert "(0 bad)" in proc.stdout.splitlines()[-1]


def test_data_check_detects_alpaca_ranking_and_kto(lfwrap, tmp_path: Path) -> None:
    ranking = tmp_path / "prefs.jsonl"
    ranking.write_text(json.dumps({"instruction": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    kto = tmp_path / "kto.jsonl"
    kto.write_text(json.dumps({"instruction": "q", "output": "a", "kto_tag": False}) + "\n")
    assert lfwrap("data", "check", str(ranking)).stdout.startswith("Assuming alpaca + ranking from")
    assert lfwrap("data", "check", str(kto)).stdout.startswith("Assuming alpaca + kto (kto_tag=kto_tag) from")


def test_data_check_a_registered_dataset_with_its_own_entry(lfwrap, repo: Path) -> None:
    proc = lfwrap("data", "check", "--dataset", "dpo_en_demo", "--dataset-dir", "data", check=True)
    info = repo / "data" / "dataset_info.json"
    assert proc.stdout.splitlines()[0] == (
        f"Dataset 'dpo_en_demo': sharegpt + ranking, as its entry in {info} says."
    )
    proc = lfwrap("data", "check", "--dataset", "c4_demo", "--dataset-dir", "data", check=True)
    assert "c4_demo.jsonl: pt, 39 rows (0 bad)" in proc.stdout
    proc = lfwrap("data", "check", "--dataset", "alpaca_en", "--dataset-dir", "data", check=True)
    assert "loaded from hub; its rows can't be checked offline" in proc.stdout
    proc = lfwrap("data", "check", "--dataset", "dpo_demo_en", "--dataset-dir", "data")
    assert proc.returncode == 1 and "did you mean 'dpo_en_demo'" in proc.stderr


def test_train_config_and_template_exclude_each_other(lfwrap) -> None:
    proc = lfwrap("train", "--template", "sft_lora", "--config", "x.yaml")
    assert proc.returncode == 2
    assert "--template and --config exclude each other" in proc.stderr


def test_train_config_refuses_a_broken_row_before_anything_starts(lfwrap, repo: Path, lfwrap_home) -> None:
    _break_a_row(repo)
    proc = lfwrap("train", "--config", "examples/train_lora/llama3_lora_sft.yaml", "--dry-run")
    assert proc.returncode == 1
    assert "row 4 (line 17): 'output' missing" in proc.stderr
    assert not any((lfwrap_home / "runs").glob("*")) if (lfwrap_home / "runs").exists() else True


def test_train_config_refuses_ppo_and_foreign_configs(lfwrap, repo: Path) -> None:
    proc = lfwrap("train", "--config", "examples/train_lora/llama3_lora_ppo.yaml", "--dry-run")
    assert proc.returncode == 1 and PPO in proc.stderr
    proc = lfwrap("train", "--config", "examples/deepspeed/ds_z3_config.json", "--dry-run")
    assert proc.returncode == 1 and "is a DeepSpeed config" in proc.stderr


def test_train_config_dry_run_records_absolute_paths(lfwrap, repo: Path) -> None:
    proc = lfwrap("train", "--config", "examples/train_lora/qwen2vl_lora_sft.yaml", "--set", "lora_rank=4",
                  "--set", "output_dir=saves/mine", "--dry-run", "--name", "vl")
    assert proc.returncode == 0, proc.stderr
    assert "lora_rank: 4\n" in proc.stdout
    assert f"output_dir: {repo / 'saves' / 'mine'}\n" in proc.stdout
    assert f"media_dir: {repo / 'data'}\n" in proc.stdout  # images stay where the config's data is
    proc = lfwrap("train", "--config", "examples/train_lora/llama3_lora_sft.yaml", "--set", "lora_rnak=4")
    assert proc.returncode == 2 and "did you mean `lora_rank`" in proc.stderr


def test_templates_list_shows_ppo_status(lfwrap) -> None:
    proc = lfwrap("templates", check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ppo_lora"))
    assert "UNAVAILABLE" in line and "dpo_lora or kto_lora" in line


def test_dataset_info_keys_llamafactory_ignores_warn_but_typos_are_errors(repo: Path) -> None:
    info = json.loads((repo / "data" / "dataset_info.json").read_text())
    info["identity"]["description"] = "my own note"  # LLaMA-Factory ignores it: accepted
    (repo / "data" / "dataset_info.json").write_text(json.dumps(info, indent=2))
    config = Path("examples/train_lora/llama3_lora_sft.yaml")
    problems = check(config)
    assert [(p.severity, p.message) for p in problems] == [
        ("warning", "dataset 'identity': unknown key 'description' (LLaMA-Factory ignores it)")]
    info["identity"]["formating"] = "alpaca"  # a typo of a real key: refused
    (repo / "data" / "dataset_info.json").write_text(json.dumps(info, indent=2))
    assert any("unknown key 'formating' (did you mean 'formatting'?)" in p.message
               for p in check(config) if p.severity == "error")


@pytest.mark.local
def test_rows_over_cutoff_len_are_reported_with_the_local_tokenizer(repo: Path, tiny_model: Path, lfwrap):
    from tokenizers import Tokenizer

    text = (repo / "examples/train_lora/llama3_lora_sft.yaml").read_text()
    text = text.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(tiny_model))
    text = text.replace("cutoff_len: 2048", "")
    (repo / "short.yaml").write_text(text + "cutoff_len: 40\n")
    warnings = [p.message for p in check(repo / "short.yaml") if p.severity == "warning"]
    encoder = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    rows = json.loads((repo / "data" / "alpaca_en_demo.json").read_text())
    texts = ["\n".join([row["instruction"], row["output"]]) for row in rows]
    lengths = sorted(len(encoder.encode(text, add_special_tokens=False).ids) for text in texts)
    over = sum(length > 40 for length in lengths)
    assert over and f"dataset 'alpaca_en_demo': {over} of 3 rows" in " ".join(warnings)
    assert f"max {lengths[-1]}" in " ".join(warnings)
    (repo / "long.yaml").write_text(text + "cutoff_len: 4096\n")
    assert not any("exceed cutoff_len" in p.message for p in check(repo / "long.yaml"))
    proc = lfwrap("data", "check", "data/alpaca_en_demo.json", "--model", str(tiny_model),
                  "--cutoff-len", "40")
    assert f"{over} of 3 rows" in proc.stdout.splitlines()[-1]


def test_validate_without_a_local_tokenizer_never_imports_one(repo: Path) -> None:
    code = ("import sys; from pathlib import Path; from wrapper.validate import validate_file; "
            "validate_file(Path('examples/train_lora/llama3_lora_sft.yaml'), data_check=True); "
            "print(sorted(m for m in ('tokenizers', 'transformers', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert proc.stdout.strip() == "[]"


def test_a_missing_deepspeed_file_is_refused(repo: Path, monkeypatch) -> None:
    config = Path("examples/train_lora/llama3_lora_sft_ds3.yaml")
    assert errors(config) == []
    monkeypatch.chdir(repo / "examples")
    (repo / "examples" / "data").symlink_to(repo / "data")  # datasets found, the DeepSpeed file not
    assert errors(Path("train_lora/llama3_lora_sft_ds3.yaml")) == [
        f"`deepspeed: examples/deepspeed/ds_z3_config.json`: no such file "
        f"({repo / 'examples' / 'examples/deepspeed/ds_z3_config.json'}); relative paths are taken from the "
        "working directory, as llamafactory-cli does"
    ]


def test_train_config_plans_for_docker_and_distributed_flags(lfwrap, repo: Path) -> None:
    proc = lfwrap("train", "--config", "examples/train_lora/llama3_lora_sft.yaml", "--backend", "docker",
                  "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dataset_dir: /app/run\n" in proc.stdout and "output_dir: /app/run/output\n" in proc.stdout
    assert "# container spec (Engine API POST /containers/create)" in proc.stdout
    proc = lfwrap("train", "--config", "examples/train_lora/llama3_lora_sft.yaml", "--gpus", "none",
                  "--nproc-per-node", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "FORCE_TORCHRUN=1" in proc.stdout and "NPROC_PER_NODE=2" in proc.stdout
    # images outside $LFWRAP_HOME are not mounted into a container: one sentence says so
    proc = lfwrap("train", "--config", "examples/train_lora/qwen2vl_lora_sft.yaml", "--backend", "docker",
                  "--dry-run")
    assert proc.returncode == 1 and f"Refusing to mount {repo / 'data'} into the container" in proc.stderr


def test_fields_llamafactory_ignores_pass_validate_but_data_check_hints_at_typos(repo: Path, lfwrap) -> None:
    data = repo / "data" / "alpaca_en_demo.json"
    rows = json.loads(data.read_text())
    rows[0]["outputs"] = "an extra field of my own"  # not mapped: LLaMA-Factory ignores it
    data.write_text(json.dumps(rows, indent=2))
    assert errors(Path("examples/train_lora/llama3_lora_sft.yaml")) == []
    proc = lfwrap("data", "check", "data/alpaca_en_demo.json")
    assert proc.returncode == 1 and "'outputs' unknown field (did you mean 'output'?)" in proc.stdout


@pytest.mark.parametrize(("name", "kind"), [("dpo_demo", "alpaca + ranking"), ("kto_demo", "alpaca + kto"),
                                            ("identity", "alpaca"), ("sharegpt_demo", "sharegpt")])
def test_data_check_bundled_datasets_with_their_entries(lfwrap, name: str, kind: str) -> None:
    proc = lfwrap("data", "check", "--dataset", name, check=True)
    assert proc.stdout.startswith(f"Dataset '{name}': {kind}, as its entry in "), proc.stdout
    assert "(0 bad)" in proc.stdout


def test_an_entry_mapping_only_its_prompt_is_pt_unless_rows_have_output(lfwrap, repo: Path) -> None:
    info = json.loads((repo / "data" / "dataset_info.json").read_text())
    info["qa"] = {"file_name": "alpaca_en_demo.json", "columns": {"prompt": "instruction"}}
    (repo / "data" / "dataset_info.json").write_text(json.dumps(info))
    # rows with `output` are not pt; but a `columns` object replaces LLaMA-Factory's defaults, so this
    # entry maps no response column: it reads no answer in any row (sft would drop them all)
    proc = lfwrap("data", "check", "--dataset", "qa", "--dataset-dir", "data")
    assert proc.returncode == 1
    assert proc.stdout.startswith("Dataset 'qa': alpaca, as its entry")
    assert 'maps no `response` in its `columns`, so LLaMA-Factory finds no response in any row; add ' \
        '"response": "output"' in proc.stdout
    info["qa"]["columns"]["response"] = "output"
    (repo / "data" / "dataset_info.json").write_text(json.dumps(info))
    lfwrap("data", "check", "--dataset", "qa", "--dataset-dir", "data", check=True)
    proc = lfwrap("data", "check", "--dataset", "c4_demo", "--dataset-dir", "data", check=True)
    assert proc.stdout.startswith("Dataset 'c4_demo': pt, as its entry")
