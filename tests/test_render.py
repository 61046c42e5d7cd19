"""Templates and safe rendering: defaults validate, values cannot inject keys or tags, --set, overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from wrapper import home
from wrapper.datasets.registry import dataset_info_for
from wrapper.errors import ConfigError, UsageError
from wrapper.render import (
    deepspeed_presets,
    get_template,
    list_templates,
    render_deepspeed,
    render_template,
    write_deepspeed,
    yaml_value,
)
from wrapper.validate import validate_file

ALL_TEMPLATES = {
    "sft_lora": "train", "sft_qlora": "train", "sft_full": "train", "pt_lora": "train",
    "dpo_lora": "train", "kto_lora": "train", "rm_lora": "train", "ppo_lora": "train",
    "infer": "infer", "merge_lora": "export", "predict": "eval",
}
STANDARD_TAGS = {
    f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null", "seq", "map")
}

# Strings that would change the document's structure if pasted into YAML unquoted.
PAYLOADS = [
    "x\nstage: ppo",
    "x\r\nstage: ppo",
    "a: b",
    "value # comment",
    "{stage: ppo}",
    "[1, 2]",
    "&anchor x",
    "*alias",
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/name:os.system",
    "- item",
    "? key",
    "| block",
    "> folded",
    "'single'",
    '"double"',
    'back\\slash\\"',
    "%TAG ! tag:example.com,2000:",
    "---\nstage: ppo",
    "...",
    "yes",
    "null",
    "~",
    "1e3",
    "0x1F",
    "",
    " padded ",
    "tab\there",
    "nel\x85stage: ppo",
    "line\u2028sep\u2029par",
    "bom\ufeff",
    "ctrl\x00\x07\x1b\x7f",
    "中文 神奇海螺 😀",
    "{{ stage }}",
    "{% raw %}",
]


def _tags(node: yaml.Node) -> set[str]:
    found = {node.tag}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found |= _tags(key) | _tags(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found |= _tags(item)
    return found


def _write_user_template(name: str, text: str) -> Path:
    path = home.user_templates_dir() / f"{name}.yaml.j2"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- quoting


@pytest.mark.parametrize("payload", PAYLOADS)
def test_yaml_value_round_trips_any_string_as_one_scalar(payload: str) -> None:
    text = f"key: {yaml_value(payload)}\nother: 1\n"
    assert "\n" not in yaml_value(payload)
    assert yaml.safe_load(text) == {"key": payload, "other": 1}
    assert _tags(yaml.compose(text)) <= {f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "map")}


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**70, 0.1, 1e-4, 5e-05, 1e20, -2.5e-12, 3.0, float("inf"), -float("inf"),
     ["a", 1, None, ["nested: x"]], {"k: v": "x\ny", "n": [1.5, False]}, Path("/tmp/a b")],
)
def test_yaml_value_round_trips_typed_values(value: object) -> None:
    loaded = yaml.safe_load(f"key: {yaml_value(value)}")["key"]
    expected = str(value) if isinstance(value, Path) else value
    assert loaded == expected
    assert type(loaded) is type(expected)


def test_yaml_value_nan_and_unknown_type() -> None:
    assert math.isnan(yaml.safe_load(f"k: {yaml_value(float('nan'))}")["k"])
    with pytest.raises(ConfigError, match="Cannot write a value of type object"):
        yaml_value(object())


# --------------------------------------------------------------------------- bundled templates


def test_every_bundled_template_is_listed_with_kind_and_command() -> None:
    infos = {info.name: info for info in list_templates()}
    assert {name: info.kind for name, info in infos.items()} == ALL_TEMPLATES
    for name, info in infos.items():
        first, second = info.path.read_text(encoding="utf-8").splitlines()[:2]
        assert first.startswith("# Used by: lfwrap "), name
        assert second.startswith("# Example: lfwrap ") and f" --template {name} --set " in second, name
        assert info.description and info.variables, name
        for var, spec in info.variables.items():
            assert spec.help, f"{name}.{var} has no help"


@pytest.mark.parametrize("name", sorted(set(ALL_TEMPLATES) - {"ppo_lora"}))
def test_every_template_renders_with_defaults_and_validates(name: str, tmp_path: Path) -> None:
    rendered = render_template(name)
    assert rendered.template.name == name
    assert [p for p in rendered.problems if p.severity == "error"] == []
    assert rendered.data == yaml.safe_load(rendered.text)
    assert rendered.text.startswith("# Used by: ")
    out = tmp_path / f"{name}.yaml"
    out.write_text(rendered.text, encoding="utf-8")
    assert [p for p in validate_file(out) if p.severity == "error"] == []
    # every declared variable that maps to a LLaMA-Factory key reaches the config with its default
    for var, spec in rendered.template.variables.items():
        if var in rendered.data and spec.default is not None:
            assert rendered.data[var] == spec.default, (name, var)


def test_defaults_point_at_the_bundled_identity_dataset() -> None:
    data = render_template("sft_lora").data
    assert data["dataset"] == "identity"
    assert data["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct" and data["template"] == "qwen"
    assert data["output_dir"].startswith("saves/")
    # rendering writes nothing: the entries are what a run will write there
    assert not (Path(data["dataset_dir"]) / "dataset_info.json").exists()
    assert "identity" in (dataset_info_for(Path(data["dataset_dir"])) or {})
    assert Path(data["dataset_dir"]) == home.user_datasets_dir()


def test_stage_specific_keys() -> None:
    qlora = render_template("sft_qlora").data
    assert (qlora["quantization_bit"], qlora["quantization_method"]) == (4, "bnb")
    dpo = render_template("dpo_lora", ["pref_beta=0.25", "pref_loss=ipo"]).data
    assert (dpo["stage"], dpo["pref_beta"], dpo["pref_loss"]) == ("dpo", 0.25, "ipo")
    assert dpo["dataset"] == "dpo_demo"
    assert render_template("kto_lora").data["stage"] == "kto"
    assert render_template("rm_lora").data["stage"] == "rm"
    with pytest.raises(ConfigError) as refused:  # LLaMA-Factory 0.9.5 cannot run PPO (trl pins)
        render_template("ppo_lora", ["reward_model=saves/my_rm"])
    assert "stage ppo cannot run with LLaMA-Factory 0.9.5" in str(refused.value.problems[0])
    assert "dpo_lora or kto_lora" in str(refused.value.problems[0])
    merge = render_template("merge_lora").data
    assert {"export_dir", "export_size", "export_device", "export_legacy_format"} <= set(merge)


def test_infer_adapter_is_optional() -> None:
    base = render_template("infer").data
    assert "adapter_name_or_path" not in base and "finetuning_type" not in base
    assert base["infer_backend"] == "huggingface"
    tuned = render_template("infer", ["adapter_name_or_path=saves/sft_lora", "infer_backend=vllm"]).data
    assert tuned["adapter_name_or_path"] == "saves/sft_lora"
    assert (tuned["finetuning_type"], tuned["infer_backend"]) == ("lora", "vllm")
    with pytest.raises(UsageError, match="infer_backend"):
        render_template("infer", ["infer_backend=tensorrt"])


def test_sft_full_inlines_the_rendered_deepspeed_preset(lfwrap_home: Path) -> None:
    data = render_template("sft_full").data
    assert data["deepspeed"] == render_deepspeed("z3")
    assert data["deepspeed"]["zero_optimization"]["stage"] == 3
    assert not lfwrap_home.exists() or not any(lfwrap_home.iterdir())  # no file written
    # ds_preset is a template variable that is no LLaMA-Factory key: --set still works for it
    data = render_template("sft_full", ["ds_preset=z2"]).data
    assert "ds_preset" not in data
    assert data["deepspeed"]["zero_optimization"]["stage"] == 2
    assert render_template("sft_full", ["ds_preset=null"]).data["deepspeed"] is None  # DeepSpeed off
    with pytest.raises(UsageError, match=r"DeepSpeed preset `z3_ofload` \(did you mean `z3_offload`\?\)"):
        render_template("sft_full", ["ds_preset=z3_ofload"])


def test_deepspeed_presets(tmp_path: Path) -> None:
    assert deepspeed_presets() == ["z2", "z3", "z3_offload"]
    z2, z3, off = render_deepspeed("z2"), render_deepspeed("z3"), render_deepspeed("z3_offload")
    assert (z2["zero_optimization"]["stage"], z3["zero_optimization"]["stage"]) == (2, 3)
    assert "offload_optimizer" not in z3["zero_optimization"]
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert z2["train_micro_batch_size_per_gpu"] == "auto"
    written = write_deepspeed("z3_offload", tmp_path / "run")
    assert json.loads(written.read_text(encoding="utf-8")) == off


# --------------------------------------------------------------------------- --set


def test_set_types_values_by_the_schema() -> None:
    data = render_template(
        "sft_lora",
        ["lora_rank=16", "learning_rate=5e-5", "bf16=true", "max_samples=null", "lora_target=q_proj,v_proj"],
    ).data
    assert data["lora_rank"] == 16 and isinstance(data["lora_rank"], int)
    assert data["learning_rate"] == 5e-5 and isinstance(data["learning_rate"], float)
    assert data["bf16"] is True and data["max_samples"] is None
    assert data["lora_target"] == "q_proj,v_proj"


def test_set_adds_or_replaces_any_schema_key() -> None:
    rendered = render_template(
        "sft_lora", {"lr_scheduler_type": "linear", "do_sample": "false", "report_to": "none", "seed": "7"}
    )
    data = rendered.data
    assert (data["lr_scheduler_type"], data["do_sample"], data["seed"]) == ("linear", False, 7)
    # a replaced key keeps one line; an added one is appended once
    assert rendered.text.count("lr_scheduler_type:") == 1
    assert rendered.text.count("\nseed: 7\n") == 1
    assert set(data) == set(render_template("sft_lora").data) | {"do_sample", "seed"}


def test_extra_keys_are_set_programmatically_and_win() -> None:
    data = render_template(
        "sft_lora", ["output_dir=saves/a"], extra={"output_dir": "/runs/1/output", "save_only_model": True}
    ).data
    assert data["output_dir"] == "/runs/1/output" and data["save_only_model"] is True


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["lora_rank"], "--set 'lora_rank' has no `=`; write it as --set key=value (lora_rank=16)."),
        (["=3"], "--set '': a key is a name like `lora_rank`"),
        (
            ["lora_rnak=8"],
            "`lora_rnak` is neither a variable of template `sft_lora` nor a LLaMA-Factory 0.9.5 key "
            "(did you mean `lora_rank`?); run `lfwrap templates show sft_lora` to see its variables.",
        ),
        (["lora_rank=eight"], "--set lora_rank=eight: `lora_rank` expects an integer"),
        (["bf16=maybe"], "--set bf16=maybe: `bf16` expects true or false"),
        (["lr_scheduler_type=cosin"], "cosine"),
    ],
)
def test_bad_set_is_a_usage_error(sets: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        render_template("sft_lora", sets)
    assert message in str(info.value)


def test_validation_errors_raise_config_error_with_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        render_template("sft_lora", ["template=qwenn", "dataset=nope"])
    assert "renders a config with 2 error(s)" in str(info.value)
    messages = [str(p) for p in info.value.problems]
    assert any("qwenn" in m and "did you mean `qwen`" in m for m in messages)
    assert any("nope" in m and m.startswith("sft_lora (rendered):") for m in messages)


def test_warnings_are_returned_not_raised() -> None:
    rendered = render_template("sft_lora", ["template=llama3"])
    assert rendered.data["template"] == "llama3"
    assert [p.severity for p in rendered.problems] == ["warning"]
    assert "qwen" in rendered.problems[0].message


def test_unknown_template_suggests_a_name() -> None:
    with pytest.raises(UsageError, match=r"Unknown template `sft_lra` \(did you mean `sft_lora`\?\); run"):
        render_template("sft_lra")
    with pytest.raises(UsageError, match="Unknown template `zzz`; run `lfwrap templates` to list them."):
        get_template("zzz")


# --------------------------------------------------------------------------- injection


# --set strings are typed by the schema, which trims them and reads null/~ as null: leave those out here
SET_PAYLOADS = [p for p in PAYLOADS if p == p.strip() and p not in ("", "null", "~")]


@pytest.mark.parametrize("payload", SET_PAYLOADS)
def test_set_values_cannot_add_keys_or_tags(payload: str) -> None:
    keys = set(render_template("sft_lora").data)
    # a template variable (output_dir), and a schema key that is not one (run_name, appended)
    rendered = render_template("sft_lora", {"output_dir": payload, "run_name": payload})
    assert set(rendered.data) == keys | {"run_name"}
    assert rendered.data["output_dir"] == payload and rendered.data["run_name"] == payload
    assert rendered.data["stage"] == "sft"
    assert _tags(yaml.compose(rendered.text)) <= STANDARD_TAGS


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p])  # an empty model name is rightly refused
def test_extra_values_cannot_add_keys_or_tags(payload: str) -> None:
    keys = set(render_template("infer").data)
    rendered = render_template("infer", extra={"model_name_or_path": payload, "default_system": payload})
    assert set(rendered.data) == keys | {"default_system"}
    assert rendered.data["model_name_or_path"] == payload and rendered.data["default_system"] == payload
    assert _tags(yaml.compose(rendered.text)) <= STANDARD_TAGS


def test_list_and_mapping_values_stay_inside_their_key() -> None:
    rendered = render_template(
        "sft_lora", extra={"report_to": ["none\nstage: ppo"], "ray_init_kwargs": {"a\nb: c": "!!python/none"}}
    )
    assert rendered.data["report_to"] == ["none\nstage: ppo"]
    assert rendered.data["ray_init_kwargs"] == {"a\nb: c": "!!python/none"}
    assert rendered.data["stage"] == "sft"
    assert _tags(yaml.compose(rendered.text)) <= STANDARD_TAGS


def test_extra_key_must_be_a_name() -> None:
    with pytest.raises(UsageError, match="is not a name like `output_dir`"):
        render_template("sft_lora", extra={"stage: ppo\nx": 1})


# --------------------------------------------------------------------------- user templates

HEADER = """# Used by: lfwrap serve --template {name}
# Example: lfwrap render --template {name} --set run_tag=a
{{# lfwrap
kind: infer
command: lfwrap serve
description: {description}
variables:
{variables}
-#}}
"""


def test_user_template_overrides_a_bundled_one() -> None:
    bundled = get_template("sft_lora").path
    text = bundled.read_text(encoding="utf-8").replace("lora_rank: {default: 8,", "lora_rank: {default: 32,")
    path = _write_user_template("sft_lora", text)
    info = get_template("sft_lora")
    assert info.path == path and info.variables["lora_rank"].default == 32
    assert [t.path for t in list_templates() if t.name == "sft_lora"] == [path]
    assert render_template("sft_lora").data["lora_rank"] == 32
    assert render_template("sft_lora", ["lora_rank=4"]).data["lora_rank"] == 4


def test_user_template_with_its_own_variable() -> None:
    variables = '  persona: {default: a helpful bot, help: "Who."}\n  tokens: {default: 2, help: x}'
    body = (
        'model_name_or_path: "m"\ntemplate: "default"\n'
        'default_system: {{ "You are " ~ persona }}\nmax_new_tokens: {{ tokens * 100 }}\n'
    )
    header = HEADER.format(name="persona", description="Persona.", variables=variables)
    _write_user_template("persona", header + body)
    assert "persona" in {t.name for t in list_templates()}
    data = render_template("persona", ["persona=x\nstage: ppo", "tokens=5"]).data
    assert data == {
        "model_name_or_path": "m", "template": "default",
        "default_system": "You are x\nstage: ppo", "max_new_tokens": 500,
    }
    with pytest.raises(UsageError, match="`tokens` expects a int like 2"):
        render_template("persona", ["tokens=many"])


def test_user_template_cannot_escape_the_sandbox() -> None:
    body = "stage: {{ ''.__class__.__mro__[1].__subclasses__() }}\n"
    _write_user_template("evil", HEADER.format(name="evil", description="Evil.", variables="  {}") + body)
    with pytest.raises(ConfigError, match="evil.yaml.j2 failed to render"):
        render_template("evil")


def test_user_template_undefined_variable_is_an_error() -> None:
    body = "stage: {{ stag }}\n"
    _write_user_template("typo", HEADER.format(name="typo", description="Typo.", variables="  {}") + body)
    with pytest.raises(ConfigError, match="'stag' is undefined"):
        render_template("typo")


def test_user_template_header_is_checked() -> None:
    text = HEADER.format(name="bad", description="Bad.", variables="  {}")
    text = text.replace("description:", "descripton:")
    _write_user_template("bad", text + "stage: sft\n")
    with pytest.raises(ConfigError, match=r"unknown key `descripton` \(did you mean `description`\?\)"):
        get_template("bad")
    _write_user_template("bare", "stage: sft\n")
    with pytest.raises(ConfigError, match="bare.yaml.j2 has a bad `lfwrap` header: no `{# lfwrap"):
        render_template("bare")


# --------------------------------------------------------------------------- CLI


def test_cli_templates_lists_every_template(lfwrap) -> None:
    proc = lfwrap("templates")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "COMMAND", "DESCRIPTION"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows == ALL_TEMPLATES
    assert lfwrap("templates", "list").stdout == proc.stdout


def test_cli_templates_show(lfwrap) -> None:
    proc = lfwrap("templates", "show", "dpo_lora")
    assert proc.returncode == 0, proc.stderr
    assert "pref_beta" in proc.stdout and "0.1" in proc.stdout and "DPO beta" in proc.stdout
    rendered = proc.stdout.split("Rendered with defaults:\n", 1)[1]
    assert yaml.safe_load(rendered)["stage"] == "dpo"
    bad = lfwrap("templates", "show", "dpo")
    assert bad.returncode == 2  # a usage error
    assert bad.stderr.startswith("Error: Unknown template `dpo`")


def test_cli_render_prints_or_writes(lfwrap, tmp_path: Path) -> None:
    printed = lfwrap("render", "--template", "sft_lora", "--set", "lora_rank=16")
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["lora_rank"] == 16
    out = tmp_path / "sft.yaml"
    written = lfwrap("render", "-t", "sft_lora", "--set", "lora_rank=16", "-o", str(out))
    assert written.returncode == 0 and written.stdout == ""
    assert out.read_text(encoding="utf-8") == printed.stdout
    assert f"Wrote {out}" in written.stderr


def test_cli_render_warnings_to_stderr(lfwrap) -> None:
    proc = lfwrap("render", "-t", "sft_lora", "--set", "template=llama3")
    assert proc.returncode == 0
    assert "warning:" in proc.stderr and "warning" not in proc.stdout
    assert yaml.safe_load(proc.stdout)["template"] == "llama3"


@pytest.mark.parametrize(
    ("args", "first_line", "code"),  # 2: a usage error (a wrong command line); 1: a config that fails
    [
        (["-t", "nope"], "Error: Unknown template `nope`; run `lfwrap templates` to list them.", 2),
        (["-t", "sft_lora", "--set", "lora_rnak=1"], "Error: --set lora_rnak=1: `lora_rnak` is neither", 2),
        (["-t", "sft_lora", "--set", "cutoff_len=long"], "Error: --set cutoff_len=long: `cutoff_len` ", 2),
        (["-t", "sft_lora", "--set", "dataset=missing"], "Error: Template `sft_lora` renders a config ", 1),
        (["-t", "sft_lora", "-o", "/nonexistent/x/y.yaml"], "Error: Cannot write /nonexistent/x/y.yaml", 2),
    ],
)
def test_cli_render_errors_are_one_sentence(lfwrap, args: list[str], first_line: str, code: int) -> None:
    proc = lfwrap("render", *args)
    assert proc.returncode == code
    assert proc.stderr.startswith(first_line)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_help_ends_with_examples(lfwrap) -> None:
    for args in (["templates"], ["templates", "show"], ["render"]):
        proc = lfwrap(*args, "--help")
        assert proc.returncode == 0
        examples = proc.stdout.split("Examples:", 1)[1]
        assert "  $ lfwrap " in examples, args
