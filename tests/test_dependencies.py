"""pyproject.toml's dependencies are what wrapper/ imports, so they cannot drift.

Every import in wrapper/ (module level, inside functions, under TYPE_CHECKING) is read with ast and
mapped to its distribution. The core dependencies are exactly the distributions the package imports
outside the optional extras; each runtime extra holds what its feature imports (plus what LLaMA-Factory's
own process needs, named below); wrapper/extras.py's table agrees with pyproject.toml; and the CLI and
every module outside the extras import with the extras' modules unavailable.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import textwrap
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from wrapper.extras import EXTRAS

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wrapper"
RUNTIME_EXTRAS = ("local", "rag", "rag-dense", "demo")
# In `local` for the LLaMA-Factory process lfwrap starts, never imported by lfwrap itself:
# torchaudio/torchvision (imported by LLaMA-Factory 0.9.5), its BLEU/ROUGE packages (`lfwrap eval`).
UPSTREAM_ONLY = {"local": {"torchvision", "torchaudio", "jieba", "nltk", "rouge-chinese"}}
# Modules that only an extra's feature imports, and only after checking for it.
EXTRA_MODULES = {"wrapper.rag.dense"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


@functools.cache
def installed_by() -> dict[str, list[str]]:
    return packages_distributions()


def distribution(module: str) -> str:
    """The distribution that installs top-level `module`; its own name, normalised, when not installed
    (an extra's module in a core-only environment: all of them are named like their distribution)."""
    return canonicalize_name(installed_by().get(module, [module])[0])


@functools.cache
def imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the wrapper/ files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "wrapper":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_import_scan_sees_lazy_and_type_checking_imports() -> None:
    found = imports()
    assert "wrapper/rag/pgstore.py" in found["psycopg"]  # imported inside a function
    assert "wrapper/launch/docker_backend.py" in found["docker"]  # also under TYPE_CHECKING
    assert "wrapper/evaluate/runner.py" in found["llamafactory"]  # runs in LLaMA-Factory's Python


def test_every_import_is_declared_and_every_core_dependency_is_imported() -> None:
    meta = project()
    core = names(meta["dependencies"])
    extras = {name: names(meta["optional-dependencies"][name]) for name in RUNTIME_EXTRAS}
    imported = {distribution(module): files for module, files in imports().items()}
    undeclared = {d: sorted(f) for d, f in imported.items() if d not in core.union(*extras.values())}
    assert not undeclared, f"imported by wrapper/ but in no runtime dependency list: {undeclared}"
    assert core <= set(imported), f"core dependencies wrapper/ never imports: {sorted(core - set(imported))}"
    for name, listed in extras.items():
        unused = listed - set(imported) - UPSTREAM_ONLY.get(name, set())
        assert not unused, f"the {name!r} extra lists {sorted(unused)}, which wrapper/ never imports"


def test_test_and_bench_packages_stay_out_of_the_runtime() -> None:
    meta = project()
    runtime = names(meta["dependencies"])
    for name in ("test", "dev", "bench"):
        leaked = names(meta["optional-dependencies"][name]) & runtime
        assert not leaked, f"{sorted(leaked)} of the {name!r} extra are also core dependencies"
    assert {"uvicorn", "pytest", "playwright"}.isdisjoint(runtime)


def test_the_extras_table_matches_pyproject() -> None:
    meta = project()
    core = names(meta["dependencies"])
    assert set(EXTRAS) == set(RUNTIME_EXTRAS)
    for name, modules in EXTRAS.items():
        listed = names(meta["optional-dependencies"][name])
        assert {distribution(m) for m in modules} <= listed, name
    # every module the package imports from an extra only is in that extra's table, so its feature
    # can be refused in one sentence when it is missing
    for module in imports():
        listed_in = {name: names(meta["optional-dependencies"][name]) for name in RUNTIME_EXTRAS}
        owners = [name for name, listed in listed_in.items() if distribution(module) in listed]
        if distribution(module) not in core and owners:
            assert any(module in EXTRAS[name] for name in owners), (module, owners)


def test_the_cli_and_core_modules_import_without_the_extras() -> None:
    """In a Python where every extra's module (and every test-only one) fails to import."""
    test_only = {"pytest", "hypothesis", "uvicorn", "jsonschema", "schemathesis", "playwright"}
    blocked = sorted({m for modules in EXTRAS.values() for m in modules} | test_only)
    script = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        BLOCKED = set({blocked!r})

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked")

        sys.meta_path.insert(0, Block())
        import wrapper
        failed = {{}}
        for info in pkgutil.walk_packages(wrapper.__path__, "wrapper."):
            if info.name in {sorted(EXTRA_MODULES)!r}:
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed[info.name] = repr(exc)
        from click.testing import CliRunner
        from wrapper.cli.main import COMMANDS, cli
        for command in ["", *COMMANDS]:
            result = CliRunner().invoke(cli, [*command.split(), "--help"])
            if result.exit_code != 0:
                failed[f"lfwrap {{command}} --help"] = result.output[-300:]
        print(json.dumps(failed))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {}
