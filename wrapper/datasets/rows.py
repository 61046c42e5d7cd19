"""Per-row rules for LLaMA-Factory's dataset formats: alpaca, sharegpt, openai, and their ranking (preference
pairs), kto (a boolean label per row) and pt (pre-training text) variants.

Each formatting has ONE rule set: a generator `rules(row)` yielding (field, message) findings. Everything
derives from it:
  - `row_checker(...)(row)` -> (chars, turns) for a good row, else the list of every finding;
  - `RuleSet.ok(row)` stops at the first finding (the quick yes/no);
  - `RuleSet.explain(row)` lists them all (with "did you mean" for near-miss keys).
Messages are built only when a rule fails, so a good row costs the same as a hand-written fast path.
The rules follow LLaMA-Factory 0.9.5's data/converter.py and data/processor/*.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.suggest import did_you_mean

Finding = tuple[str | None, str]  # (field or None, what is wrong)
Result = tuple[int, int] | list[Finding]
RowCheck = Callable[[Any], Result]
Rules = Callable[[Any], Iterator[Finding]]

# Columns every format shares, in LLaMA-Factory's default naming.
_SHARED_COLUMNS = {
    "system": "system",
    "chosen": "chosen",
    "rejected": "rejected",
    "kto_tag": "kto_tag",
    "tools": "tools",
    "images": "images",
    "videos": "videos",
    "audios": "audios",
}
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    **_SHARED_COLUMNS,
}
SHAREGPT_COLUMNS = {"messages": "conversations", **_SHARED_COLUMNS}
OPENAI_COLUMNS = {**SHAREGPT_COLUMNS, "messages": "messages"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function",
    "system_tag": "system",
}
MEDIA_COLUMNS = ("images", "videos", "audios")
# LLaMA-Factory 0.9.5 data/parser.py DatasetAttr: the only columns named by default; every other column
# (system, history, tools, media, chosen, rejected, kto_tag) is read only when the entry maps it. An entry
# with a `columns` (or `tags`) object replaces ALL of these defaults: what it leaves out is not read.
ENTRY_DEFAULT_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "messages": "conversations",
}
_REMOTE_MEDIA = ("http://", "https://", "data:", "s3://", "gs://")


def defaults(formatting: str) -> tuple[dict[str, str], dict[str, str]]:
    """The (columns, tags) a dataset of this formatting uses unless told otherwise."""
    if formatting == "alpaca":
        return dict(ALPACA_COLUMNS), {}
    if formatting == "sharegpt":
        return dict(SHAREGPT_COLUMNS), dict(SHAREGPT_TAGS)
    return dict(OPENAI_COLUMNS), dict(OPENAI_TAGS)


def describe(value: Any) -> str:
    """A short, JSON-like description of a value for messages."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kind = {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return kind if len(text) > 40 else f"{kind} {text}"


@dataclass(frozen=True)
class Spec:
    """What a dataset's rows must look like: its dataset_info entry, resolved against the defaults.

    `pt`: pre-training text (stage pt): only the prompt column (e.g. `text`) is used.
    `kto`: every row needs a boolean kto_tag (the entry names a kto_tag column).
    `media_dir`: where relative image/video/audio paths are looked up (None: not checked); only the
    media columns the entry maps (`media`) are read, as LLaMA-Factory does.
    `typo_fields`: report a field that looks like a misspelt column ("outptu"); LLaMA-Factory itself
    ignores unknown fields, so checks of a registered dataset turn this off.
    `exact`: `columns` / `tags` are exactly what LLaMA-Factory reads (a registered entry, see
    entry_spec); a column or tag missing from them is not read at all. Otherwise (a file checked with
    flags or detection) every column has its usual name and is checked when a row has it.
    """

    formatting: str = "alpaca"
    ranking: bool = False
    kto: bool = False
    pt: bool = False
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    media_dir: Path | None = None
    media: tuple[str, ...] = ()
    typo_fields: bool = True
    exact: bool = False

    @property
    def kind(self) -> str:
        """The name shown to users: alpaca, sharegpt, openai, pt, or `<formatting> + ranking|kto`."""
        if self.pt:
            return "pt"
        extra = " + ranking" if self.ranking else " + kto" if self.kto else ""
        return self.formatting + extra


def make_spec(
    formatting: str = "alpaca",
    *,
    ranking: bool = False,
    pt: bool = False,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    media_dir: Path | None = None,
    typo_fields: bool = True,
) -> Spec:
    base_columns, base_tags = defaults(formatting)
    kto = bool(columns and columns.get("kto_tag"))
    base_columns.update({key: value for key, value in (columns or {}).items() if value})
    base_tags.update({key: value for key, value in (tags or {}).items() if value})
    media = tuple(kind for kind in MEDIA_COLUMNS if (columns or {}).get(kind))
    return Spec(formatting, ranking, kto, pt, base_columns, base_tags, media_dir, media, typo_fields)


def entry_spec(
    formatting: str = "alpaca",
    *,
    ranking: bool = False,
    pt: bool = False,
    columns: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    media_dir: Path | None = None,
) -> Spec:
    """The rules of a dataset_info entry, read as LLaMA-Factory's DatasetAttr.join reads it: `columns` /
    `tags` are the entry's objects (None when it has none); only the columns they map are read."""
    mapped = dict(ENTRY_DEFAULT_COLUMNS) if columns is None else dict(columns)
    mapped_tags = dict(SHAREGPT_TAGS) if tags is None else dict(tags)  # openai too: no defaults of its own
    found = {key: value for key, value in mapped.items() if isinstance(value, str) and value}
    found_tags = {key: value for key, value in mapped_tags.items() if isinstance(value, str) and value}
    media = tuple(kind for kind in MEDIA_COLUMNS if kind in found)
    kto = "kto_tag" in found
    return Spec(formatting, ranking, kto, pt, found, found_tags, media_dir, media, False, True)


def _unmapped(spec: Spec, *names: str) -> Iterator[Finding]:
    """An entry that leaves out a column or tag LLaMA-Factory needs: it fails or drops every row."""
    for name in names:
        if name not in spec.columns and name not in spec.tags:
            where = "tags" if name.endswith("_tag") and name != "kto_tag" else "columns"
            usual = {**ALPACA_COLUMNS, **SHAREGPT_TAGS, "messages": "conversations"}[name]
            yield (
                None,
                f"the dataset_info entry maps no `{name}` in its `{where}`, so LLaMA-Factory finds no "
                f'{name} in any row; add "{name}": "{usual}" (its field name) to the entry\'s `{where}`',
            )


def _unknown_keys(row: dict, known: frozenset[str], cache: dict[str, str]) -> Iterator[Finding]:
    """Keys that look like a misspelt column (others are ignored, as LLaMA-Factory does)."""
    if row.keys() <= known:
        return
    for key in row.keys() - known:
        hint = cache.get(key)
        if hint is None:
            hint = cache[key] = did_you_mean(str(key), sorted(known))
        if hint:
            yield key, f"unknown field{hint}"


def _media(row: dict, spec: Spec) -> Iterator[Finding]:
    """Image/video/audio paths that exist neither under media_dir nor as given (LLaMA-Factory would fail
    to open them mid-training)."""
    if spec.media_dir is None:
        return
    for kind in spec.media:
        name = spec.columns[kind]
        value = row.get(name)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            paths = item if isinstance(item, list) else [item]  # a video given as a list of frames
            for path in paths:
                if not isinstance(path, str):
                    continue  # decoded bytes / {"path": ...} objects come from hub datasets
                if path.startswith(_REMOTE_MEDIA) or os.path.isfile(os.path.join(spec.media_dir, path)):
                    continue
                if not os.path.isfile(path):
                    yield f"{name}[{index}]", f"file '{path}' not found under media_dir {spec.media_dir}"


def _kto(row: dict, spec: Spec) -> Iterator[Finding]:
    kto_tag = spec.columns.get("kto_tag")
    if kto_tag is None:
        return
    if (spec.kto or kto_tag in row) and row.get(kto_tag).__class__ is not bool:
        yield kto_tag, f"expected true or false, got {describe(row.get(kto_tag))}"


def _not_object(row: Any) -> Iterator[Finding]:
    yield None, f"a row must be a JSON object, got {describe(row)}"


def _pt_rules(spec: Spec) -> Rules:
    text, query = spec.columns.get("prompt"), spec.columns.get("query")

    def rules(row: Any) -> Iterator[Finding]:
        if row.__class__ is not dict:
            yield from _not_object(row)
            return
        if text is None:
            yield from _unmapped(spec, "prompt")
            return
        value = row.get(text)
        if value.__class__ is not str:
            if text not in row:
                yield (
                    text,
                    "missing: pre-training rows need their text in this column"
                    + did_you_mean(text, list(row)),
                )
            else:
                yield text, f"expected a string, got {describe(value)}"
        elif not value and not row.get(query):
            yield text, "empty"
        extra = row.get(query) if query else None
        if extra is not None and extra.__class__ is not str:
            yield query, f"expected a string, got {describe(extra)}"

    return rules


def _alpaca_rules(spec: Spec) -> Rules:
    columns = spec.columns
    prompt, query, response = columns.get("prompt"), columns.get("query"), columns.get("response")
    history, system = columns.get("history"), columns.get("system")
    chosen, rejected = columns.get("chosen"), columns.get("rejected")
    needed = ("chosen", "rejected") if spec.ranking else ("response",)
    answers = tuple(columns[key] for key in needed if key in columns)
    known = frozenset(columns.values())
    hints: dict[str, str] = {}

    def rules(row: Any) -> Iterator[Finding]:
        if row.__class__ is not dict:
            yield from _not_object(row)
            return
        if len(answers) < len(needed):
            yield from _unmapped(spec, *needed)
        for name in (prompt, *answers):
            if name is None:
                continue
            value = row.get(name)
            if value.__class__ is str:
                if name != prompt and not value:
                    yield name, "empty"
                continue
            if name not in row:
                shape = next((key for key in ("conversations", "messages") if key in row), None)
                hint = f" (the row has '{shape}': try --formatting sharegpt or openai)" if shape else ""
                if name in (chosen, rejected) and response and response in row:
                    hint = f" (with --ranking, '{chosen}' and '{rejected}' replace '{response}')"
                yield name, "missing" + hint
            else:
                yield name, f"expected a string, got {describe(value)}"
        for name in (query, system):
            value = row.get(name) if name else None
            if value is not None and value.__class__ is not str:
                yield str(name), f"expected a string, got {describe(value)}"
        if prompt and prompt in row and not row.get(prompt) and not (query and row.get(query)):
            yield prompt, f"empty (and no '{query}'): the prompt would be empty"
        pairs = row.get(history) if history else None
        if pairs is not None:
            if pairs.__class__ is not list:
                if not spec.exact:  # LLaMA-Factory itself reads history only when it is a list
                    yield str(history), f"expected a list of [question, answer] pairs, got {describe(pairs)}"
            else:
                for index, pair in enumerate(pairs):
                    if not (
                        pair.__class__ is list
                        and len(pair) == 2
                        and pair[0].__class__ is str
                        and pair[1].__class__ is str
                    ):
                        message = f"expected a [question, answer] pair of strings, got {describe(pair)}"
                        yield f"{history}[{index}]", message
        yield from _kto(row, spec)
        yield from _media(row, spec)
        if spec.typo_fields:
            yield from _unknown_keys(row, known, hints)

    return rules


def _messages_rules(spec: Spec) -> Rules:
    """sharegpt and openai: a list of role/content messages, optional system first, roles alternating."""
    columns, tags, ranking = spec.columns, spec.tags, spec.ranking
    openai = spec.formatting == "openai"
    messages, system = columns.get("messages"), columns.get("system")
    chosen, rejected = columns.get("chosen"), columns.get("rejected")
    role, content = tags.get("role_tag"), tags.get("content_tag")
    user, assistant, system_tag = tags.get("user_tag"), tags.get("assistant_tag"), tags.get("system_tag")
    observation, function = tags.get("observation_tag"), tags.get("function_tag")
    # a role tag the entry leaves out maps nothing: LLaMA-Factory then skips (or fails on) rows using it
    odd = tuple(tag for tag in (user, observation) if tag)
    even = tuple(tag for tag in (assistant, function) if tag)
    all_roles = [tag for tag in (user, assistant, observation, function, system_tag) if tag]
    role_set = frozenset(all_roles)
    needed = ["messages", "role_tag", "content_tag"] + (["chosen", "rejected"] if ranking else [])
    missing = [name for name in needed if name not in columns and name not in tags]
    known = frozenset(columns.values())
    hints: dict[str, str] = {}

    def merged(turns: list[dict]) -> list[tuple[int, str]]:
        # openai: consecutive tool results are one observation; an assistant with tool_calls is a call
        out: list[tuple[int, str]] = []
        for index, message in enumerate(turns):
            name = message.get(role)
            if openai and name in (assistant, function) and message.get("tool_calls"):
                name = function
            if openai and name == observation and out and out[-1][1] == observation:
                continue
            out.append((index, str(name)))
        return out

    def message_problems(turns: list) -> Iterator[Finding]:
        for index, message in enumerate(turns):
            where = f"{messages}[{index}]"
            if message.__class__ is not dict:
                yield where, f"expected an object with '{role}' and '{content}', got {describe(message)}"
                continue
            for key in (str(role), str(content)):
                if key not in message:
                    yield where, f"missing '{key}'{did_you_mean(key, list(message))}"
            text = message.get(content)
            if content in message and text.__class__ is not str:
                if not (openai and text is None and message.get("tool_calls")):
                    yield f"{where}.{content}", f"expected a string, got {describe(text)}"
            name = message.get(role)
            if role in message and (name.__class__ is not str or name not in role_set):
                hint = did_you_mean(str(name), all_roles)
                expected = ", ".join(all_roles)
                yield f"{where}.{role}", f"unknown role {describe(name)}; expected one of {expected}{hint}"

    def rules(row: Any) -> Iterator[Finding]:
        if row.__class__ is not dict:
            yield from _not_object(row)
            return
        if missing:
            yield from _unmapped(spec, *missing)
            return
        assert messages and role and content
        turns = row.get(messages)
        if messages not in row:
            shape = next((key for key in ("conversations", "messages", "instruction") if key in row), None)
            hint = ""
            if shape == "instruction":
                hint = " (the row has 'instruction': try --formatting alpaca)"
            elif shape:
                hint = f" (the row has '{shape}': try --columns messages={shape} or another --formatting)"
            yield messages, "missing" + hint
            return
        shape_ok = False
        if turns.__class__ is not list or not turns:
            yield messages, f"expected a non-empty list of messages, got {describe(turns)}"
        else:
            found = False
            for finding in message_problems(turns):
                found = True
                yield finding
            shape_ok = not found
        if shape_ok:
            start = 1 if turns[0].get(role) == system_tag else 0
            order = merged(turns[start:])
            out_of_order = False
            for position, (index, name) in enumerate(order):
                allowed = odd if position % 2 == 0 else even
                if name not in allowed:
                    out_of_order = True
                    yield (
                        f"{messages}[{index + start}].{role}",
                        f"'{name}' out of order: turn {position + 1} must be "
                        f"{' or '.join(repr(tag) for tag in allowed)} (roles alternate after an "
                        f"optional first '{system_tag}')",
                    )
                    break
            if not out_of_order:
                if ranking and len(order) % 2 == 0:
                    yield (
                        messages,
                        f"{len(order)} turn(s): a preference row must end with a "
                        f"'{user}' turn, answered by '{chosen}' and '{rejected}'",
                    )
                elif not ranking and (len(order) % 2 or not order):
                    yield (
                        messages,
                        f"{len(order)} turn(s): it must end with an answer from "
                        f"'{assistant}' (an even count after any system prompt)",
                    )
        if ranking:
            for name in (str(chosen), str(rejected)):
                answer = row.get(name)
                if not (
                    answer.__class__ is dict
                    and answer.get(role) in even
                    and answer.get(content).__class__ is str
                ):
                    yield (
                        name,
                        f"expected an object with '{role}': '{assistant}' and a string "
                        f"'{content}', got {describe(answer)}",
                    )
        value = row.get(system) if system else None
        if value is not None and value.__class__ is not str:
            yield str(system), f"expected a string, got {describe(value)}"
        yield from _kto(row, spec)
        yield from _media(row, spec)
        if spec.typo_fields:
            yield from _unknown_keys(row, known, hints)

    return rules


def _alpaca_stats(spec: Spec) -> Callable[[dict], tuple[int, int]]:
    names = [
        spec.columns[key]
        for key in ("prompt", "query", "response", "system", "chosen", "rejected")
        if key in spec.columns
    ]
    history = spec.columns.get("history")

    def stats(row: dict) -> tuple[int, int]:
        chars = 0
        for name in names:
            value: Any = row.get(name)
            if value.__class__ is str:
                chars += len(value)
        found = row.get(history) if history else None
        pairs = found if isinstance(found, list) else []
        for first, second in pairs:
            chars += len(first) + len(second)
        return chars, 1 + len(pairs)

    return stats


def _messages_stats(spec: Spec) -> Callable[[dict], tuple[int, int]]:
    # only called on rows that pass the rules, so the entry maps messages, role_tag and content_tag
    messages, system = spec.columns.get("messages", ""), spec.columns.get("system")
    role, content = spec.tags.get("role_tag", ""), spec.tags.get("content_tag", "")
    system_tag = spec.tags.get("system_tag")

    def stats(row: dict) -> tuple[int, int]:
        turns = row[messages]
        chars = 0
        for message in turns:
            text = message.get(content)
            if text.__class__ is str:
                chars += len(text)
        value: Any = row.get(system) if system else None
        if value.__class__ is str:
            chars += len(value)
        count = len(turns) - (1 if system_tag and turns[0].get(role) == system_tag else 0)
        return chars, (count + 1) // 2

    return stats


def _pt_stats(spec: Spec) -> Callable[[dict], tuple[int, int]]:
    text, query = spec.columns.get("prompt", ""), spec.columns.get("query")

    def stats(row: dict) -> tuple[int, int]:
        return len(row[text]) + len((row.get(query) if query else None) or ""), 1

    return stats


@dataclass(frozen=True)
class RuleSet:
    spec: Spec
    rules: Rules
    stats: Callable[[dict], tuple[int, int]]

    def ok(self, row: Any) -> bool:
        """The quick verdict: stops at the first finding."""
        return next(self.rules(row), None) is None

    def explain(self, row: Any) -> list[Finding]:
        """Every finding of a row (empty for a good row)."""
        return list(self.rules(row))

    def check(self, row: Any) -> Result:
        found = list(self.rules(row))
        return found if found else self.stats(row)


def rule_set(spec: Spec) -> RuleSet:
    if spec.pt:
        return RuleSet(spec, _pt_rules(spec), _pt_stats(spec))
    if spec.formatting == "alpaca":
        return RuleSet(spec, _alpaca_rules(spec), _alpaca_stats(spec))
    return RuleSet(spec, _messages_rules(spec), _messages_stats(spec))


def row_checker(
    formatting: str,
    *,
    ranking: bool = False,
    pt: bool = False,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    media_dir: Path | None = None,
) -> RowCheck:
    """The row check for a formatting; `columns` / `tags` override LLaMA-Factory's defaults."""
    spec = make_spec(formatting, ranking=ranking, pt=pt, columns=columns, tags=tags, media_dir=media_dir)
    return rule_set(spec).check
