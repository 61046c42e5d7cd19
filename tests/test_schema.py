"""The LLaMA-Factory schema snapshot: freshness against the installed LLaMA-Factory, and the reader."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from typing import Literal, Optional

import pytest

from wrapper.errors import UsageError
from wrapper.schema import TYPES, load_schema, snapshot_path
from wrapper.schema_extract import MACHINE_DEPENDENT_DEFAULTS, MACHINE_DEPENDENT_MARKER, dumps, normalise_type


def _field_differences(old: dict, new: dict) -> list[str]:
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            lines.append(f"removed: {name}")
        elif name not in old:
            lines.append(f"added: {name} = {new[name]}")
        elif old[name] != new[name]:
            keys = sorted(set(old[name]) | set(new[name]))
            changed = [k for k in keys if old[name].get(k) != new[name].get(k)]
            details = "; ".join(f"{k}: {old[name].get(k)!r} -> {new[name].get(k)!r}" for k in changed)
            lines.append(f"changed: {name} ({details})")
    return lines


@pytest.mark.local
def test_snapshot_matches_the_installed_llamafactory(tmp_path):
    out = tmp_path / "regenerated.json"
    proc = subprocess.run(
        [sys.executable, "-m", "wrapper.schema_extract", "-o", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(out.read_text(encoding="utf-8"))
    shipped_text = snapshot_path().read_text(encoding="utf-8")
    shipped = json.loads(shipped_text)
    assert fresh["llamafactory_version"] == shipped["llamafactory_version"], (
        f"installed LLaMA-Factory is {fresh['llamafactory_version']}, the snapshot is "
        f"{shipped['llamafactory_version']}: add a snapshot with `python -m wrapper.schema_extract -o ...`"
    )
    differences = _field_differences(shipped["fields"], fresh["fields"])
    assert not differences, "schema snapshot is stale:\n" + "\n".join(differences)
    assert fresh["templates"] == shipped["templates"], (
        f"templates added {sorted(set(fresh['templates']) - set(shipped['templates']))}, "
        f"removed {sorted(set(shipped['templates']) - set(fresh['templates']))}"
    )
    changed_models = {k for k in set(fresh["model_templates"]) | set(shipped["model_templates"])
                      if fresh["model_templates"].get(k) != shipped["model_templates"].get(k)}
    assert not changed_models, f"model -> template map differs for {sorted(changed_models)[:20]}"
    # Same content must also mean the same bytes: the file is written deterministically.
    assert dumps(fresh) == shipped_text


def test_field_differences_names_each_changed_field():
    old = {"a": {"type": "int", "default": 1}, "b": {"type": "str"}}
    new = {"a": {"type": "int", "default": 2}, "c": {"type": "bool"}}
    assert _field_differences(old, new) == [
        "changed: a (default: 1 -> 2)",
        "removed: b",
        "added: c = {'type': 'bool'}",
    ]


def test_snapshot_holds_every_argument_group():
    schema = load_schema()
    assert schema.version == "0.9.5"
    groups: dict[str, int] = {}
    for spec in schema.fields.values():
        groups[spec.group] = groups.get(spec.group, 0) + 1
        assert spec.type in TYPES, spec
    assert groups == {
        "ModelArguments": 76,
        "DataArguments": 28,
        "FinetuningArguments": 97,
        "GeneratingArguments": 10,
        "TrainingArguments": 135,
    }
    assert "qwen" in schema.templates and "llama3" in schema.templates and "default" in schema.templates


def test_field_specs_carry_types_defaults_and_choices():
    schema = load_schema()
    stage = schema.field("stage")
    assert stage is not None
    assert (stage.group, stage.type, stage.nullable) == ("FinetuningArguments", "str", False)
    assert stage.default == "sft"
    assert stage.choices == ["pt", "sft", "rm", "ppo", "dpo", "kto"]
    lr = schema.field("learning_rate")
    assert lr is not None and (lr.type, lr.default, lr.group) == ("float", 5e-05, "TrainingArguments")
    max_samples = schema.field("max_samples")
    assert max_samples is not None and (max_samples.type, max_samples.nullable) == ("int", True)
    # Enum-typed transformers fields keep the Enum's values as the allowed set.
    scheduler = schema.field("lr_scheduler_type")
    assert scheduler is not None and "cosine" in (scheduler.choices or [])
    # default_factory fields are evaluated.
    include = schema.field("include_for_metrics")
    assert include is not None and include.default == []
    assert schema.field("no_such_key") is None


def test_machine_dependent_defaults_are_masked():
    schema = load_schema()
    for name in MACHINE_DEPENDENT_DEFAULTS:
        spec = schema.field(name)
        assert spec is not None and spec.default == MACHINE_DEPENDENT_MARKER
    optim = schema.field("optim")
    assert optim is not None and "adamw_torch" in (optim.choices or [])


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int, ("int", False, None)),
        (Optional[str], ("str", True, None)),  # noqa: UP045 - how LLaMA-Factory writes some fields
        (bool | None, ("bool", True, None)),
        (Literal["a", "b"], ("str", False, ["a", "b"])),
        (Optional[Literal["x"]], ("str", True, ["x"])),  # noqa: UP045
        (Color, ("str", False, ["red", "blue"])),
        (Color | str, ("str", False, ["red", "blue"])),
        (dict | str | None, ("any", True, None)),
        (list[str] | None, ("list", True, None)),
        (dict[str, bool], ("dict", False, None)),
        (str | bool, ("any", False, None)),
    ],
)
def test_normalise_type(annotation, expected):
    assert normalise_type(annotation) == expected


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("learning_rate", "5e-3", 5e-3),
        ("num_train_epochs", "3", 3.0),
        ("lora_rank", "16", 16),
        ("bf16", "false", False),
        ("do_train", "yes", True),
        ("max_samples", "null", None),
        ("lora_target", "q_proj,v_proj", "q_proj,v_proj"),  # a comma string: LLaMA-Factory splits it
        ("include_for_metrics", "inputs, loss", ["inputs", "loss"]),
        ("report_to", "none", "none"),
        ("stage", "dpo", "dpo"),
        ("liger_kernel_config", '{"rope": true}', {"rope": True}),
        ("ray_init_kwargs", "12", 12),
    ],
)
def test_coerce_types_set_values_by_the_schema(key, raw, value):
    result = load_schema().coerce(key, raw)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("learning_rate", "fast",
         "--set learning_rate=fast: `learning_rate` expects a number, and 'fast' is not one."),
        ("lora_rank", "8.5", "--set lora_rank=8.5: `lora_rank` expects an integer, and '8.5' is not one."),
        ("bf16", "maybe", "--set bf16=maybe: `bf16` expects true or false, and 'maybe' is not one."),
        ("lora_rank", "null", "--set lora_rank=null: `lora_rank` must be an integer, not null."),
        ("stage", "dpoo", "--set stage=dpoo: `stage` must be one of pt, sft, rm, ppo, dpo, kto; got 'dpoo' "
                          "(did you mean `dpo`?)."),
        ("lerning_rate", "1", "--set lerning_rate=1: unknown key `lerning_rate` (not an argument of "
                              "LLaMA-Factory 0.9.5); did you mean `learning_rate`?"),
        ("liger_kernel_config", "[1]",
         "--set liger_kernel_config=[1]: `liger_kernel_config` expects a mapping or null, "
         "and '[1]' is not one."),
    ],
)
def test_coerce_refuses_with_key_value_and_expected_type(key, raw, message):
    with pytest.raises(UsageError) as info:
        load_schema().coerce(key, raw)
    assert str(info.value) == message


def test_suggest_and_default_template():
    schema = load_schema()
    assert schema.suggest("per_device_train_batchsize") == "per_device_train_batch_size"
    assert schema.suggest("zzzz") is None
    assert schema.default_template("Qwen/Qwen2.5-0.5B-Instruct") == "qwen"
    assert schema.default_template("meta-llama/Meta-Llama-3-8B-Instruct") == "llama3"
    # A local folder named after a known model is matched by its last component, case-insensitively.
    assert schema.default_template("/data/models/qwen2.5-0.5b-instruct/") == "qwen"
    assert schema.default_template("/home/me/.lfwrap/models/tiny-llama") is None


def test_reading_the_schema_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from wrapper.schema import load_schema\n"
        "import wrapper.validate\n"
        "load_schema().coerce('learning_rate', '1e-4')\n"
        "heavy = [m for m in ('torch', 'transformers', 'llamafactory') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"
