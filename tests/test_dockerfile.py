"""The gateway image: Dockerfile rules, and its build context really holds what the image needs.

No Docker engine runs on these machines, so the image is not built here. Instead the build context is
assembled the way the engine would (files under the root minus .dockerignore), the build stage's COPY
instructions are replayed into a temp folder, and its `pip install .` runs there in a fresh venv
without torch: `lfwrap gateway --help` must work and `import torch` must fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines()
                                              if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for item in instructions(text):
        if item[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(item)
    return found


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negated
    return result


def build_context(root: Path) -> list[str]:
    rules = []
    for line in (root / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern(pattern)))
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".git/", ".venv/")) or rel in (".git", ".venv"):
            continue  # huge, and excluded by the first pattern anyway (checked below)
        if path.is_file() and not ignored(rel, rules):
            files.append(rel)
    return files


@pytest.fixture(scope="module")
def context() -> list[str]:
    return build_context(ROOT)


def test_dockerignore_matching_follows_docker_rules() -> None:
    rules = [(False, _pattern("*")), (True, _pattern("wrapper")), (False, _pattern("**/__pycache__"))]
    assert ignored("tests/test_x.py", rules) and ignored(".venv/bin/python", rules)
    assert not ignored("wrapper/cli/main.py", rules)
    assert ignored("wrapper/cli/__pycache__/main.cpython-311.pyc", rules)


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    built = stages(text)
    assert len(built) >= 2
    for stage in built:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", image), f"unpinned base {image}"
    final = built[-1]
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["lfwrap", "gateway"]
    assert ("EXPOSE", "8080") in final
    runs = " ".join(arg for stage in built for word, arg in stage if word == "RUN")
    assert "pip install ." in runs
    for heavy in ("torch", "llamafactory", "[local]", ".[", "vllm"):
        assert heavy not in runs, f"the gateway image must not install {heavy}"


def test_build_context_holds_what_the_copies_need_and_nothing_else(context: list[str]) -> None:
    build = stages(DOCKERFILE.read_text(encoding="utf-8"))[0]
    for word, arg in build:
        if word == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                found = any(f == source or f.startswith(source + "/") for f in context)
                assert found, f"{source} is not in the build context"
    assert "pyproject.toml" in context and "wrapper/cli/main.py" in context
    assert "wrapper/schema_data/llamafactory-0.9.5.json" in context
    assert any(f.startswith("templates/") for f in context)
    assert any(f.startswith("datasets/") for f in context)
    for unwanted in ("tests/", "artifacts/", ".env", "docker-compose.yml", "bench/"):
        assert not any(f == unwanted or f.startswith(unwanted) for f in context), unwanted
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in context)


@pytest.mark.e2e
def test_core_package_installs_from_the_context_without_torch(context: list[str], tmp_path: Path) -> None:
    # Lay out the context, then replay the build stage: WORKDIR /src, COPY ..., pip install .
    ctx = tmp_path / "context"
    for rel in context:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ctx / rel)
    src = tmp_path / "src"
    src.mkdir()
    for word, arg in stages(DOCKERFILE.read_text(encoding="utf-8"))[0]:
        if word == "COPY":
            *sources, dest = arg.split()
            target = src / dest.removeprefix("./")
            for source in sources:
                if (ctx / source).is_dir():
                    shutil.copytree(ctx / source, target)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ctx / source, target / Path(source).name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(src)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LFWRAP_HOME": str(tmp_path / "home"),
           "HOME": str(tmp_path)}
    helped = subprocess.run([str(venv / "bin" / "lfwrap"), "gateway", "--help"], capture_output=True,
                            text=True, env=env, timeout=120, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "Usage: lfwrap gateway" in helped.stdout and "$ lfwrap gateway" in helped.stdout
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True,
                              text=True, env=env, timeout=60, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # The installed package carries its bundled templates and datasets (wheel force-include).
    bundled = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from wrapper import home; print(home.bundled_templates_dir()); print(home.bundled_datasets_dir())"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )
    assert bundled.returncode == 0, bundled.stderr
    for line in bundled.stdout.split():
        assert str(venv) in line and Path(line).is_dir()
