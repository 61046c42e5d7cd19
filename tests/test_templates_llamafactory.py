"""The rendered configs are accepted by LLaMA-Factory's own argument parser (llamafactory.hparams).

All templates are parsed in ONE child process (importing llamafactory costs ~11 s): train configs with
get_train_args, the infer and merge_lora configs with get_infer_args (what `llamafactory-cli api`,
`chat` and `export` call). The model is the locally built tiny Llama; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wrapper.render import render_template

pytestmark = pytest.mark.e2e

PROBE = r"""
import json, sys
from pathlib import Path
from omegaconf import OmegaConf
from llamafactory.hparams import get_infer_args, get_train_args

results = {}
for name, item in json.load(open(sys.argv[1], encoding="utf-8")).items():
    try:
        # read the YAML text as `llamafactory-cli train cfg.yaml` does (hparams.parser.read_args)
        path = Path(sys.argv[2], name + ".yaml")
        path.write_text(item["text"], encoding="utf-8")
        args = OmegaConf.to_container(OmegaConf.load(path))
        if args != item["config"]:
            raise AssertionError(f"OmegaConf reads {args!r}, lfwrap rendered {item['config']!r}")
        if item["kind"] == "train":
            model, data, training, finetuning, _ = get_train_args(args)
            seen = {
                "stage": finetuning.stage, "finetuning_type": finetuning.finetuning_type,
                "lora_rank": finetuning.lora_rank, "pref_beta": finetuning.pref_beta,
                "pref_loss": finetuning.pref_loss, "reward_model": finetuning.reward_model,
                "quantization_bit": model.quantization_bit,
                "quantization_method": str(model.quantization_method),
                "model_name_or_path": model.model_name_or_path, "dataset": data.dataset,
                "run_name": training.run_name,
                "dataset_dir": data.dataset_dir, "template": data.template, "output_dir": training.output_dir,
                "learning_rate": training.learning_rate, "deepspeed": training.deepspeed,
            }
        else:
            model, data, finetuning, _ = get_infer_args(args)
            seen = {
                "model_name_or_path": model.model_name_or_path,
                "adapter_name_or_path": model.adapter_name_or_path,
                "infer_backend": str(model.infer_backend), "template": data.template,
                "export_dir": model.export_dir, "export_device": model.export_device,
            }
        results[name] = {"ok": True, "seen": seen}
    except BaseException as exc:
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
print("PROBE " + json.dumps(results, default=str))
"""

INJECTION = "x\nstage: ppo\n${oc.env:HOME} &a *a !!python/object:os.system # {k: v} \u2028 中文"
LORA_TRAIN = ["sft_lora", "sft_qlora", "pt_lora", "dpo_lora", "kto_lora", "rm_lora"]  # ppo: refused


def _configs(tiny_model: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    model = {"model_name_or_path": str(tiny_model), "template": "default"}
    adapter = str(tmp_path / "adapter")
    (tmp_path / "adapter").mkdir(exist_ok=True)  # a missing local adapter is refused before LLaMA-Factory
    cases: dict[str, tuple[str, list[str], dict[str, Any]]] = {
        name: (name, [], {"output_dir": str(tmp_path / name)}) for name in LORA_TRAIN
    }
    cases["sft_full"] = ("sft_full", [], {"output_dir": str(tmp_path / "sft_full")})
    cases["sft_full_no_deepspeed"] = ("sft_full", ["ds_preset=null"], {"output_dir": str(tmp_path / "full")})
    cases["infer"] = ("infer", [], {"adapter_name_or_path": adapter})
    cases["merge_lora"] = (
        "merge_lora", [], {"adapter_name_or_path": adapter, "export_dir": str(tmp_path / "merged")}
    )
    configs = {}
    for case, (template, sets, extra) in cases.items():
        rendered = render_template(template, sets, extra={**model, **extra})
        configs[case] = {"kind": rendered.template.kind, "config": rendered.data, "text": rendered.text}
    # Values that would add keys or tags if pasted raw reach LLaMA-Factory as the same strings.
    rendered = render_template(
        "sft_lora", extra={**model, "output_dir": str(tmp_path / "inj"), "run_name": INJECTION}
    )
    configs["injection"] = {"kind": "train", "config": rendered.data, "text": rendered.text}
    # A control the parser must refuse, so a probe that accepts everything cannot pass this test.
    bad = configs["sft_lora"]
    configs["control_unknown_key"] = {
        "kind": "train", "config": {**bad["config"], "lora_rnak": 8}, "text": bad["text"] + "lora_rnak: 8\n"
    }
    return configs


@pytest.fixture(scope="module")
def parsed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("lf_parse")
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse home fixture is not active yet
        patch.setenv("LFWRAP_HOME", str(tmp_path / "home"))
        configs = _configs(tiny_model, tmp_path)
        from wrapper.datasets.registry import prepare_dataset_dir

        prepare_dataset_dir()  # what creating a run writes; rendering alone writes nothing
    (tmp_path / "configs.json").write_text(json.dumps(configs), encoding="utf-8")
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "LLAMAFACTORY_VERBOSITY": "WARN"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "configs.json"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"probe failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return {"configs": configs, "results": json.loads(lines[-1][len("PROBE "):])}


@pytest.mark.parametrize("name", LORA_TRAIN + ["sft_full_no_deepspeed"])
def test_train_templates_are_accepted(parsed: dict[str, Any], name: str) -> None:
    result = parsed["results"][name]
    assert result["ok"], result.get("error")
    config, seen = parsed["configs"][name]["config"], result["seen"]
    for key in ("stage", "finetuning_type", "model_name_or_path", "dataset_dir", "template", "output_dir",
                "learning_rate"):
        assert seen[key] == config[key], key
    assert seen["dataset"] == config["dataset"].split(",")  # LLaMA-Factory splits the comma list
    assert Path(seen["dataset_dir"], "dataset_info.json").is_file()
    if config["finetuning_type"] == "lora":
        assert seen["lora_rank"] == config["lora_rank"]


def test_stage_specific_keys_reach_the_parser(parsed: dict[str, Any]) -> None:
    results = {name: item.get("seen", {}) for name, item in parsed["results"].items()}
    # sft_qlora is accepted here; loading the model would then need bitsandbytes on a CUDA GPU.
    qlora = results["sft_qlora"]
    assert (qlora["quantization_bit"], qlora["quantization_method"]) == (4, "bnb")
    assert results["sft_lora"]["quantization_bit"] is None
    assert (results["dpo_lora"]["stage"], results["dpo_lora"]["pref_loss"]) == ("dpo", "sigmoid")
    assert results["dpo_lora"]["pref_beta"] == parsed["configs"]["dpo_lora"]["config"]["pref_beta"]
    assert results["kto_lora"]["stage"] == "kto" and results["rm_lora"]["stage"] == "rm"
    assert results["pt_lora"]["stage"] == "pt"
    assert results["sft_full_no_deepspeed"]["deepspeed"] is None


def test_sft_full_with_deepspeed_is_refused_only_for_what_cpu_lacks(parsed: dict[str, Any]) -> None:
    # sft_full carries the ZeRO-3 preset inline (rendering writes no file; a run writes it as
    # ds_config.json), and LLaMA-Factory takes the dict as it is. On this CPU machine LLaMA-Factory stops at
    # the DeepSpeed requirement: transformers refuses when the deepspeed package is missing (it is not in
    # the `local` extra); with deepspeed installed, LLaMA-Factory asks for a torchrun launch instead.
    # Everything else in the template is accepted (sft_full_no_deepspeed above).
    config = parsed["configs"]["sft_full"]["config"]
    assert config["deepspeed"]["zero_optimization"]["stage"] == 3
    result = parsed["results"]["sft_full"]
    assert not result["ok"]
    if importlib.util.find_spec("deepspeed") is None:
        assert "PackageNotFoundError" in result["error"]
        assert "The 'deepspeed>=0.9.3' distribution was not found and is required by this application" in (
            result["error"]
        )
    else:
        assert result["error"] == "ValueError: Please use `FORCE_TORCHRUN=1` to launch DeepSpeed training."


def test_infer_and_merge_templates_are_accepted(parsed: dict[str, Any]) -> None:
    infer, merge = parsed["results"]["infer"], parsed["results"]["merge_lora"]
    assert infer["ok"], infer.get("error")
    assert merge["ok"], merge.get("error")
    adapter = parsed["configs"]["infer"]["config"]["adapter_name_or_path"]
    assert infer["seen"]["adapter_name_or_path"] == [adapter]
    assert infer["seen"]["infer_backend"] in ("huggingface", "EngineName.HF")
    assert infer["seen"]["template"] == "default"
    assert merge["seen"]["export_dir"] == parsed["configs"]["merge_lora"]["config"]["export_dir"]
    assert merge["seen"]["export_device"] == "cpu"


def test_control_config_is_refused(parsed: dict[str, Any]) -> None:
    result = parsed["results"]["control_unknown_key"]
    assert not result["ok"]
    assert "lora_rnak" in result["error"] and "HfArgumentParser" in result["error"]


def test_injection_values_reach_llamafactory_unchanged(parsed: dict[str, Any]) -> None:
    result = parsed["results"]["injection"]
    assert result["ok"], result.get("error")
    assert result["seen"]["run_name"] == INJECTION
    assert result["seen"]["stage"] == "sft"
