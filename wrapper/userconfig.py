"""A LLaMA-Factory YAML the user brings (`lfwrap train --config FILE`), made ready for a run.

    config, warnings = load_user_config(Path("examples/train_lora/llama3_lora_sft.yaml"), ["lora_rank=16"])

The file is read like llamafactory-cli reads it (OmegaConf scalars; safely), `--set key=value` overrides
are typed by the schema snapshot (like llamafactory-cli's `key=value` arguments), everything is
validated (rows of the local datasets included, unless data_check=False), and every relative path is
made absolute against the working directory, where llamafactory-cli would have resolved it. The run
then goes through the same run creation as a template (wrapper.launch.plan: plan_run, then materialize).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wrapper import lfpaths
from wrapper.errors import ConfigError, Problem, UsageError


def load_user_config(
    path: Path,
    sets: Sequence[str] = (),
    *,
    base_dir: Path | None = None,
    data_check: bool = True,
) -> tuple[dict[str, Any], list[Problem]]:
    """The config with overrides applied and absolute paths, and its warnings; ConfigError on errors."""
    from wrapper.render import parse_sets
    from wrapper.schema import load_schema
    from wrapper.validate import check_config, parse_yaml

    base = base_dir or Path.cwd()
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Config file {path} does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read {path} ({exc}); pass a UTF-8 YAML file.") from None
    parsed = parse_yaml(text, file)
    if parsed.data is None or any(p.severity == "error" for p in parsed.problems):
        raise ConfigError(
            f"{path} cannot be read as a LLaMA-Factory config; fix the lines below.", parsed.problems
        )
    data: dict[str, Any] = dict(parsed.data)
    schema = load_schema()
    for key, raw in parse_sets(sets):  # an unknown key: UsageError with "did you mean"
        data[key] = schema.coerce(key, raw) if isinstance(raw, str) else raw
    problems = check_config(data, text=text, file=file, base_dir=base, data_check=data_check)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise ConfigError(
            f"{path} has {len(errors)} error(s); fix them and try again (relative paths are taken from "
            "the working directory, as llamafactory-cli does).",
            problems,
        )
    return lfpaths.absolute_paths(data, base), problems
