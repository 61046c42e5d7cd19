"""Check a LLaMA-Factory YAML config against the schema snapshot, before anything is launched.

Every finding is a wrapper.errors.Problem with file and line; all are collected, none stops the others.
Errors are what LLaMA-Factory would refuse or fail on (later, after ~11 s of imports, or deep into
training); warnings are advisories (a chat template that differs from the model's own, ...).

The YAML is read the way LLaMA-Factory reads it (OmegaConf: `5e-3` is a float, dates stay strings),
but safely: no Python tags, duplicate keys reported instead of silently keeping the last one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wrapper import lfpaths
from wrapper.errors import DatasetError, Problem
from wrapper.schema import Schema, load_schema
from wrapper.suggest import closest

# Stages whose data LLaMA-Factory loads as preference pairs: dpo and rm call get_dataset(stage="rm"),
# which refuses a dataset without `ranking: true` (llamafactory/data/loader.py _get_merged_dataset).
PAIRWISE_STAGES = ("dpo", "rm")
# Keys LLaMA-Factory passes through split_arg(), so a YAML list works as well as a comma-separated string.
COMMA_LIST_KEYS = frozenset(
    {
        "additional_target",
        "apollo_target",
        "dataset",
        "eval_dataset",
        "freeze_extra_modules",
        "freeze_trainable_modules",
        "galore_target",
        "interleave_probs",
        "lora_target",
        "oft_target",
    }
)
PPO_REFUSED = (
    "stage ppo cannot run with LLaMA-Factory 0.9.5: its PPO trainer needs trl<=0.9.6 while the package "
    "requires trl>=0.18, so it fails at launch; train preferences with the dpo_lora or kto_lora template "
    "(stage dpo or kto) instead"
)
# Training keys with a default in LLaMA-Factory 0.9.5 / transformers: missing is accepted, with a warning.
TRAIN_DEFAULTS = {
    "stage": "stage sft",
    "finetuning_type": "lora",
    "output_dir": "transformers' default `trainer_output` in the working directory",
}
NO_TEMPLATE = (
    "no `template`: LLaMA-Factory falls back to the tokenizer's chat template or `empty`; "
    "name the model's chat template"
)
DEFAULT_DATASET_DIR = lfpaths.DEFAULT_DATASET_DIR  # relative to where LLaMA-Factory runs
DEFAULT_CUTOFF_LEN = 2048  # DataArguments.cutoff_len's default
ONLINE = "ONLINE"  # dataset_dir value that makes LLaMA-Factory treat dataset names as hub ids


class _Loader(yaml.SafeLoader):
    """Safe loader resolving scalars like OmegaConf does (what `llamafactory-cli train` uses)."""


# OmegaConf's float pattern: also `1e-5` (YAML 1.1 wants a dot), which a plain safe_load reads as a string.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
        |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
        |[-+]?[0-9]+(?:_[0-9]+)*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "binary", "omap", "pairs")
)


@dataclass
class ParsedYaml:
    data: Any  # the document (a dict when the file is usable), None when it could not be read
    lines: dict[str, int] = field(default_factory=dict)  # top-level key -> 1-based line
    problems: list[Problem] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # keys present but left out of data (refused tags)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _walk(node: yaml.Node, file: str, seen: set[int], problems: list[Problem]) -> bool:
    """Report refused tags and duplicate keys under `node`; True when the subtree is safe to construct."""
    if id(node) in seen:
        return True
    seen.add(id(node))
    safe = True
    if node.tag not in _SAFE_TAGS:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        problems.append(
            Problem(
                f"YAML tag `{tag}` refused: a config holds plain values only; remove the tag",
                file,
                _line(node),
            )
        )
        safe = False
    if isinstance(node, yaml.MappingNode):
        first_at: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                key = key_node.value
                if key in first_at:
                    problems.append(
                        Problem(
                            f"duplicate key `{key}` (first at line {first_at[key]}); LLaMA-Factory would use "
                            "only the last value, keep one",
                            file,
                            _line(key_node),
                        )
                    )
                else:
                    first_at[key] = _line(key_node)
            safe = _walk(key_node, file, seen, problems) and safe
            safe = _walk(value_node, file, seen, problems) and safe
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            safe = _walk(item, file, seen, problems) and safe
    return safe


def parse_yaml(text: str, file: str = "<config>") -> ParsedYaml:
    """Parse a config safely: syntax errors with their line, refused tags, duplicate keys, key lines."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            what = exc.problem or exc.context or "invalid YAML"
            problem = Problem(f"YAML syntax error: {what}; fix the syntax", file, line)
            return ParsedYaml(None, problems=[problem])
        except yaml.YAMLError as exc:
            return ParsedYaml(None, problems=[Problem(f"YAML syntax error: {exc}; fix the syntax", file, 1)])
        if root is None:
            return ParsedYaml(
                None,
                problems=[
                    Problem(
                        "the file is empty; expected a mapping of LLaMA-Factory keys such as `stage: sft`",
                        file,
                        1,
                    )
                ],
            )
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            return ParsedYaml(
                None,
                problems=[
                    Problem(
                        f"the config must be a mapping of keys to values (`key: value` lines), not {kind}",
                        file,
                        _line(root),
                    )
                ],
            )
        problems: list[Problem] = []
        data: dict[str, Any] = {}
        lines: dict[str, int] = {}
        refused: set[str] = set()
        seen: set[int] = set()
        for key_node, value_node in root.value:
            safe = _walk(key_node, file, seen, problems)
            safe = _walk(value_node, file, seen, problems) and safe
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                problems.append(
                    Problem(
                        "only plain `key: value` entries are allowed at the top level", file, _line(key_node)
                    )
                )
                continue
            key = key_node.value
            if key in lines:
                problems.append(
                    Problem(
                        f"duplicate key `{key}` (first at line {lines[key]}); "
                        "LLaMA-Factory would use only the last value, keep one",
                        file,
                        _line(key_node),
                    )
                )
            lines[key] = _line(key_node)  # the last one: its value is the one used
            if safe:
                data[key] = loader.construct_object(value_node, deep=True)
            else:
                refused.add(key)
        return ParsedYaml(data, lines, problems, refused)
    finally:
        loader.dispose()


# --- the checks ----------------------------------------------------------------------------------------


def config_kind(data: dict[str, Any]) -> str:
    """ "export" (export_* keys), "train" (a stage, dataset or training keys) or "infer" (api, chat)."""
    if any(key.startswith("export_") for key in data):
        return "export"
    schema = load_schema()
    training = any(
        (spec := schema.field(key)) is not None and spec.group == "TrainingArguments" for key in data
    )
    if "stage" in data or "dataset" in data or training:
        return "train"
    return "infer"


def _check_values(data: dict[str, Any], schema: Schema, at: _At) -> list[Problem]:
    problems = []
    for key, value in data.items():
        spec = schema.field(key)
        if spec is None:
            problems.append(at.error(schema.unknown_key_message(key), key))
            continue
        if key in COMMA_LIST_KEYS and isinstance(value, list):
            if all(isinstance(item, (str, int, float)) for item in value):
                continue
        problem = spec.check(value)
        if problem:
            problems.append(at.error(problem, key))
    return problems


def _check_required(data: dict[str, Any], kind: str, at: _At) -> list[Problem]:
    problems = []
    anchor = "stage" if "stage" in data else None

    def need(key: str, why: str) -> None:
        if data.get(key) in (None, "") and key not in at.refused:  # a refused value is already reported
            problems.append(at.error(f"missing `{key}`, required {why}", anchor))

    if kind == "export":
        need("model_name_or_path", "to export a model")
        need("export_dir", "to export a model")
        return problems
    if kind == "infer":
        need("model_name_or_path", "to serve or chat with a model (no `stage`: an inference config)")
        if "template" not in data:  # get_infer_args accepts it: the tokenizer's chat template, else `empty`
            problems.append(at.warning(NO_TEMPLATE, anchor))
        return problems
    stage = data.get("stage")
    need("model_name_or_path", f"for training (stage {stage})" if stage else "for training")
    for key, default in TRAIN_DEFAULTS.items():  # LLaMA-Factory accepts these missing: say what it uses
        if data.get(key) in (None, "") and key not in at.refused:
            problems.append(at.warning(f"no `{key}`: LLaMA-Factory uses {default}; name it", anchor))
    only_eval = not data.get("do_train") and (data.get("do_eval") or data.get("do_predict"))
    if only_eval:
        if not data.get("dataset") and not data.get("eval_dataset"):
            message = "missing `eval_dataset` (or `dataset`), required to evaluate or predict"
            problems.append(at.error(message, anchor))
    elif data.get("do_train"):  # LLaMA-Factory: "Please specify dataset for training."
        need("dataset", f"for training (stage {stage})" if stage else "for training")
    if stage == "ppo":
        problems.append(at.error(PPO_REFUSED, "stage"))
    if not data.get("do_train") and not only_eval:
        problems.append(
            at.warning(
                "`do_train` is not true, so LLaMA-Factory would load everything and not train; "
                "add `do_train: true`",
                anchor,
            )
        )
    if "template" not in data:
        problems.append(at.warning(NO_TEMPLATE, anchor))
    return problems


def _check_template(data: dict[str, Any], schema: Schema, at: _At) -> list[Problem]:
    template = data.get("template")
    if not isinstance(template, str):
        return []
    if template not in schema.templates:
        guess = schema.suggest_template(template)
        hint = f"; did you mean `{guess}`?" if guess else "; see LLaMA-Factory's template list"
        return [at.error(f"unknown chat template `{template}`{hint}", "template")]
    model = data.get("model_name_or_path")
    known = schema.default_template(model) if isinstance(model, str) else None
    if known and known != template:
        return [
            at.warning(
                f"`{model}` is registered with chat template `{known}`, not `{template}`; a model "
                "trained or served with another template tends to ramble",
                "template",
            )
        ]
    return []


def split_names(value: Any) -> list[str]:
    """Dataset names of a `dataset:` value: LLaMA-Factory's comma list, or a YAML list."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list):
        return [str(name).strip() for name in value if str(name).strip()]
    return []


def _check_datasets(
    data: dict[str, Any], base_dir: Path, at: _At, data_check: bool, use_cache: bool
) -> list[Problem]:
    used = [(key, name) for key in ("dataset", "eval_dataset") for name in split_names(data.get(key))]
    raw_dir = data.get("dataset_dir", DEFAULT_DATASET_DIR)
    if not used or not isinstance(raw_dir, str):
        return []
    where = "dataset_dir" if "dataset_dir" in data else "dataset"
    if raw_dir == ONLINE:
        return [
            at.warning("dataset_dir ONLINE: the datasets are hub ids, which can't be checked offline", where)
        ]
    if raw_dir.startswith("REMOTE:"):
        return [
            at.warning(
                f"dataset_dir {raw_dir}: dataset_info.json comes from the hub repo {raw_dir[7:]}, so its "
                "datasets can't be checked offline",
                where,
            )
        ]
    # pydantic: only when datasets are named
    from wrapper.datasets.info import read_dataset_info_checked
    from wrapper.datasets.registry import dataset_info_for, is_lfwrap_dataset_dir

    dataset_dir = lfpaths.dataset_dir(data, base_dir)
    info_path = dataset_dir / "dataset_info.json"
    problems: list[Problem] = []
    try:  # lfwrap's own folder: the entries a run would write there, read in memory (planning is pure)
        if is_lfwrap_dataset_dir(dataset_dir) or not info_path.is_file():
            info = dataset_info_for(dataset_dir)
        else:  # a folder of the user's: also the warnings of its entries (keys LLaMA-Factory ignores)
            info, problems = read_dataset_info_checked(info_path)
    except DatasetError as exc:
        return [at.error(f"{info_path} is invalid: {exc}", where), *exc.problems]
    if info is None:
        return [
            at.error(
                f"no dataset_info.json in dataset_dir {dataset_dir}; relative paths are taken from the "
                "working directory, as llamafactory-cli does: run from the folder that holds it "
                f"(`{raw_dir}/dataset_info.json`) or set `dataset_dir`",
                where,
            )
        ]
    stage = data.get("stage") if config_kind(data) == "train" else None
    checked: set[str] = set()
    tokenizer = cutoff_len = None
    if data_check and stage != "pt":  # pt packs text into blocks: nothing is cut off
        from wrapper.datasets.lengths import tokenizer_file

        model = data.get("model_name_or_path")
        tokenizer = tokenizer_file(str(lfpaths.resolve(model, base_dir)) if isinstance(model, str) else None)
        raw_cutoff = data.get("cutoff_len", DEFAULT_CUTOFF_LEN)
        cutoff_len = raw_cutoff if isinstance(raw_cutoff, int) and not isinstance(raw_cutoff, bool) else None
        if cutoff_len is None:
            tokenizer = None
    pt_files: dict[
        str, tuple[dict[str, Any], list[Path]]
    ] = {}  # stage pt's local JSON datasets: their text is packed in blocks
    for key, name in used:
        entry = info.get(name)
        if entry is None:
            guess = closest(name, info)
            known = ", ".join(sorted(info)) or "none"
            hint = f"; did you mean `{guess}`?" if guess else f"; it has: {known}"
            problems.append(at.error(f"dataset `{name}` is not in {info_path}{hint}", key))
            continue
        stage_problem = _stage_problem(stage, name, entry)
        if stage_problem:
            problems.append(at.error(stage_problem, key))
        elif data_check and name not in checked:
            from wrapper.datasets.verify import check_dataset

            checked.add(name)
            problems += check_dataset(
                name,
                entry,
                dataset_dir,
                stage=stage if isinstance(stage, str) else None,
                media_dir=lfpaths.media_dir(data, base_dir),
                file=at.file,
                line=at.lines.get(key, 1),
                use_cache=use_cache,
                tokenizer=tokenizer,
                cutoff_len=cutoff_len or DEFAULT_CUTOFF_LEN,
            )
            if stage == "pt" and key == "dataset" and not problems:
                pt_files[name] = (entry, _local_json_files(name, entry, dataset_dir))
    if pt_files and not problems:
        problems += _pt_blocks(data, base_dir, pt_files, at)
    return problems


def _local_json_files(name: str, entry: dict[str, Any], dataset_dir: Path) -> list[Path]:
    from wrapper.datasets.verify import data_files, entry_source

    if entry_source(entry) != "file":
        return []
    try:
        return [path for path in data_files(name, entry, dataset_dir) if path.suffix in (".json", ".jsonl")]
    except DatasetError:
        return []


def _pt_blocks(
    data: dict[str, Any], base_dir: Path, pt_files: dict[str, tuple[dict[str, Any], list[Path]]], at: _At
) -> list[Problem]:
    """Stage pt packs all text into blocks of cutoff_len tokens (packing, its default) and drops the rest:
    fewer tokens than one block and LLaMA-Factory stops with "Cannot find sufficient samples"."""
    if data.get("packing") is False or data.get("streaming"):
        return []
    cutoff_len = data.get("cutoff_len", DEFAULT_CUTOFF_LEN)
    workers = data.get("preprocessing_num_workers") or 1
    batch_size = data.get("preprocessing_batch_size", 1000)
    max_samples = data.get("max_samples")
    mix = data.get("mix_strategy", "concat")
    numbers = (cutoff_len, workers, batch_size)
    if mix != "concat" or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
        return []
    from wrapper.datasets.lengths import packed_blocks, pt_row_tokens, tokenizer_file
    from wrapper.datasets.verify import spec_for_entry

    model = data.get("model_name_or_path")
    tokenizer = tokenizer_file(str(lfpaths.resolve(model, base_dir)) if isinstance(model, str) else None)
    counts: list[int] = []
    exact = False
    for entry, files in pt_files.values():
        if not files or entry.get("num_samples"):  # from the hub, not JSON, or sampled: size unknown
            return []
        rows, exact = pt_row_tokens(files, spec_for_entry(entry, stage="pt", media_dir=None), tokenizer)
        counts += rows[:max_samples] if isinstance(max_samples, int) and max_samples > 0 else rows
    if packed_blocks(counts, cutoff_len, workers, batch_size):
        return []
    total = sum(counts)
    what = f"{total} tokens" if exact else f"at most {total} tokens"
    names = ", ".join(pt_files)
    return [
        at.error(
            f"stage pt packs the text of {names} into blocks of cutoff_len {cutoff_len} tokens, per "
            f"preprocessing worker ({workers}) and batch, but it holds {what} in all, so LLaMA-Factory finds "
            'no full block ("Cannot find sufficient samples"); lower `cutoff_len` or '
            "`preprocessing_num_workers`, or add text",
            "cutoff_len" if "cutoff_len" in data else "dataset",
        )
    ]


def _stage_problem(stage: Any, name: str, entry: dict[str, Any]) -> str | None:
    ranking = bool(entry.get("ranking", False))
    has_kto_tag = bool((entry.get("columns") or {}).get("kto_tag"))
    if stage in PAIRWISE_STAGES and not ranking:
        return (
            f"stage {stage} needs a preference dataset (`ranking: true` with chosen/rejected columns), "
            f"but `{name}` is not one; use a ranking dataset such as dpo_demo"
        )
    if stage == "kto" and (ranking or not has_kto_tag):
        why = "is a ranking dataset" if ranking else "has no `kto_tag` column"
        return (
            "stage kto needs single answers labelled by a boolean `kto_tag` column "
            f"(no ranking), but `{name}` {why}; use a dataset such as kto_demo"
        )
    if stage in ("pt", "sft", "ppo") and ranking:
        return (
            f"`{name}` is a ranking (preference) dataset, "
            f"which LLaMA-Factory refuses for stage {stage}; use it with stage dpo or rm"
        )
    return None


def _check_models(data: dict[str, Any], base_dir: Path, at: _At) -> list[Problem]:
    return [at.error(message, key) for key, message in lfpaths.model_problems(data, base_dir)]


@dataclass
class _At:
    file: str
    lines: dict[str, int]
    refused: set[str] = field(default_factory=set)

    def error(self, message: str, key: str | None = None) -> Problem:
        return Problem(message, self.file, self.lines.get(key, 1) if key else 1, "error")

    def warning(self, message: str, key: str | None = None) -> Problem:
        return Problem(message, self.file, self.lines.get(key, 1) if key else 1, "warning")


def check_config(
    data: dict,
    *,
    text: str | None = None,
    file: str = "<config>",
    base_dir: Path | None = None,
    data_check: bool = False,
    use_cache: bool = True,
) -> list[Problem]:
    """Every problem of a parsed config (errors and warnings), sorted by line.

    `text` (the YAML the data came from) gives line numbers; `base_dir` is the folder relative paths
    are resolved against: the working directory, as llamafactory-cli does (default). `data_check`:
    stream-check every row of the local datasets the config names (cached, see wrapper.datasets.verify).
    """
    lines = parse_yaml(text, file).lines if text is not None else {}
    return _check(data, _At(file, lines), base_dir or Path.cwd(), data_check, use_cache)


def _check(data: Any, at: _At, base_dir: Path, data_check: bool, use_cache: bool) -> list[Problem]:
    if not isinstance(data, dict):
        return [at.error("the config must be a mapping of keys to values (`key: value` lines)")]
    foreign = lfpaths.foreign_config(data, at.file)
    if foreign:
        return [at.error(foreign)]
    schema = load_schema()
    kind = config_kind(data)
    problems = _check_values(data, schema, at)
    problems += _check_required(data, kind, at)
    problems += _check_template(data, schema, at)
    problems += _check_models(data, base_dir, at)
    problems += _check_datasets(data, base_dir, at, data_check, use_cache)
    return _sorted(problems, at.file)


def _sorted(problems: list[Problem], file: str) -> list[Problem]:
    """By line, the config's own problems first (then those of the dataset_info.json it uses)."""
    return sorted(problems, key=lambda p: (p.file != file, p.file or "", p.line or 0))


def validate_text(
    text: str,
    *,
    file: str = "<config>",
    base_dir: Path | None = None,
    data_check: bool = False,
    use_cache: bool = True,
) -> list[Problem]:
    """Every problem of a YAML config given as text: syntax, tags, duplicates, then check_config's rules."""
    parsed = parse_yaml(text, file)
    if parsed.data is None:
        return parsed.problems
    at = _At(file, parsed.lines, parsed.refused)
    checked = _check(parsed.data, at, base_dir or Path.cwd(), data_check, use_cache)
    return _sorted(parsed.problems + checked, file)


def validate_file(
    path: Path, *, base_dir: Path | None = None, data_check: bool = False, use_cache: bool = True
) -> list[Problem]:
    """Every problem of a YAML config file; a file that cannot be read is one problem, not an exception.
    Relative paths inside it are resolved against `base_dir`, by default the working directory."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Problem("file not found; check the path", file)]
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(f"cannot read the file ({exc}); pass a UTF-8 YAML file", file)]
    return validate_text(text, file=file, base_dir=base_dir, data_check=data_check, use_cache=use_cache)
