"""Planning is pure: render, validate and `train --dry-run` write nothing, even when a dry run is
interrupted or refused; only creating a run writes, and only inside its own folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LFWRAP_HOME that does not exist yet, inside a folder we watch as a whole."""
    home = tmp_path / "watched" / "home"
    monkeypatch.setenv("LFWRAP_HOME", str(home))
    return home


@pytest.mark.parametrize("template", ["sft_lora", "sft_full", "dpo_lora"])
def test_render_writes_only_the_output_file(lfwrap, fresh: Path, tmp_path: Path, template: str):
    out = tmp_path / "out" / "x.yaml"
    out.parent.mkdir()
    lfwrap("render", "-t", template, "-o", str(out), check=True, cwd=tmp_path / "out")
    assert _tree(tmp_path / "out") == ["x.yaml"]
    assert _tree(tmp_path / "watched") == []
    # the rendered file is valid as written, datasets included, and validating it writes nothing
    lfwrap("validate", str(out), check=True)
    assert _tree(tmp_path / "watched") == [] and _tree(tmp_path / "out") == ["x.yaml"]


@pytest.mark.parametrize(
    "extra",
    [[], ["--deepspeed", "z2"], ["--gpus", "none", "--nproc-per-node", "2"], ["--backend", "docker"]],
    ids=["plain", "deepspeed", "torchrun", "docker"],
)
def test_dry_run_leaves_no_trace(lfwrap, fresh: Path, tmp_path: Path, extra: list[str]):
    proc = lfwrap("train", "-t", "sft_lora", "--name", "planned", "--dry-run", *extra, check=True,
                  cwd=tmp_path)
    assert "dry run: nothing was started or written" in proc.stdout
    assert "data/identity/identity.json <- " in proc.stdout  # the copy it would make
    assert _tree(tmp_path / "watched") == []
    lfwrap("train", "-t", "sft_lora", "--name", "planned", "--dry-run", *extra, check=True)  # name still free


def test_interrupted_dry_run_leaves_no_trace(fresh: Path, tmp_path: Path):
    command = f"'{sys.executable}' -m wrapper.cli.main train -t sft_lora --name cut --dry-run | head -1"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.startswith("# config.yaml for run cut")
    assert _tree(tmp_path / "watched") == []


def test_a_refused_docker_mount_leaves_no_queued_run(lfwrap, fresh: Path, tmp_path: Path):
    model = tmp_path / "elsewhere" / "model"
    model.mkdir(parents=True)
    for dry in (["--dry-run"], []):
        proc = lfwrap("train", "-t", "sft_lora", "--backend", "docker", "--model", str(model),
                      "--set", "template=default", "--name", "refused", *dry)
        assert proc.returncode != 0 and "Refusing to mount" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert _tree(tmp_path / "watched") == []


@pytest.mark.parametrize("name", ["../../../escaped", "../escaped", "a/../../escaped"])
def test_a_hand_added_entry_cannot_write_outside_the_run(
    lfwrap, lfwrap_home: Path, tmp_path: Path, name: str
):
    folder = lfwrap_home / "datasets"
    folder.mkdir(parents=True)
    (folder / "rows.json").write_text('[{"instruction": "q", "output": "a"}]', encoding="utf-8")
    info = {name: {"file_name": "rows.json"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    before = _tree(tmp_path.parent)
    for dry in (["--dry-run"], []):
        proc = lfwrap("train", "-t", "sft_lora", "--dataset", name, "--name", "esc", *dry, cwd=tmp_path)
        assert proc.returncode != 0 and "is not allowed" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    new = set(_tree(tmp_path.parent)) - set(before)
    # other tests' folders beside ours are not ours to watch (a server they started may still log there)
    own = {lfwrap_home.name, f"{lfwrap_home.name}-cache", tmp_path.name}
    others = {path.split("/")[0] for path in before} - own
    assert sorted(path for path in new if path.split("/")[0] not in others) == []
    assert not list(lfwrap_home.parent.rglob("escaped*"))
    assert not (lfwrap_home / "runs" / "esc").exists()


def test_creating_a_run_twice_never_deletes_the_first(lfwrap_home: Path):
    from wrapper.errors import RunError
    from wrapper.launch import plan as planning

    config = {"stage": "sft", "do_train": True, "model_name_or_path": "m", "dataset": "identity",
              "template": "default", "finetuning_type": "lora", "output_dir": "x"}
    first = planning.plan_run(config, name="twice")
    second = planning.plan_run(config, name="twice")  # both planned before either exists (a race)
    run_dir = planning.materialize(first)
    with pytest.raises(RunError, match="already exists"):
        planning.materialize(second)
    assert (run_dir / "meta.json").is_file() and (run_dir / "data" / "identity").is_dir()
