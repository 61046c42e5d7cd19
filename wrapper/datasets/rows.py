"""Per-row rules for LLaMA-Factory's dataset formats (alpaca, sharegpt, openai).

`row_checker(...)` returns a function `check(row) -> (chars, turns) | list[(field, message)]`.
Each checker has a lean fast path for good rows; only a row that fails it is looked at again
by the slower `explain` path, which names every problem (with "did you mean" for near-miss keys).
The rules follow LLaMA-Factory 0.9.5's data/converter.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from wrapper.datasets.info import did_you_mean

Finding = tuple[str | None, str]  # (field or None, what is wrong)
Result = tuple[int, int] | list[Finding]
RowCheck = Callable[[Any], Result]

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
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False)
    return kind if len(text) > 40 else f"{kind} {text}"


def _strings(values: list) -> bool:
    return all(isinstance(value, str) for value in values)


def _unknown_keys(row: dict, known: frozenset[str], cache: dict[str, str]) -> list[Finding]:
    """Keys that look like a misspelt column (others are ignored, as LLaMA-Factory does)."""
    found: list[Finding] = []
    for key in row.keys() - known:
        hint = cache.get(key)
        if hint is None:
            hint = cache[key] = did_you_mean(str(key), sorted(known))
        if hint:
            found.append((key, f"unknown field{hint}"))
    return found


def _alpaca(columns: Mapping[str, str], ranking: bool, kto_required: bool) -> RowCheck:
    prompt, query, response = columns["prompt"], columns["query"], columns["response"]
    history, system, kto_tag = columns["history"], columns["system"], columns["kto_tag"]
    chosen, rejected = columns["chosen"], columns["rejected"]
    answers = (chosen, rejected) if ranking else (response,)
    known = frozenset(columns.values())
    hints: dict[str, str] = {}

    def explain(row: Any) -> list[Finding]:
        if not isinstance(row, dict):
            return [(None, f"a row must be a JSON object, got {describe(row)}")]
        found: list[Finding] = []
        for name in (prompt, *answers):
            if name not in row:
                shape = next((key for key in ("conversations", "messages") if key in row), None)
                hint = f" (the row has '{shape}': try --formatting sharegpt or openai)" if shape else ""
                if name in (chosen, rejected) and response in row:
                    hint = f" (with --ranking, '{chosen}' and '{rejected}' replace '{response}')"
                found.append((name, "missing" + hint))
            elif not isinstance(row[name], str):
                found.append((name, f"expected a string, got {describe(row[name])}"))
            elif name != prompt and not row[name]:
                found.append((name, "empty"))
        for name in (query, system):
            if row.get(name) is not None and not isinstance(row[name], str):
                found.append((name, f"expected a string, got {describe(row[name])}"))
        if not row.get(prompt) and not row.get(query) and prompt in row:
            found.append((prompt, f"empty (and no '{query}'): the prompt would be empty"))
        pairs = row.get(history)
        if pairs is not None:
            if not isinstance(pairs, list):
                found.append((history, f"expected a list of [question, answer] pairs, got {describe(pairs)}"))
            else:
                for index, pair in enumerate(pairs):
                    if not (isinstance(pair, list) and len(pair) == 2 and _strings(pair)):
                        message = f"expected a [question, answer] pair of strings, got {describe(pair)}"
                        found.append((f"{history}[{index}]", message))
        if kto_tag in row or kto_required:
            if not isinstance(row.get(kto_tag), bool):
                found.append((kto_tag, f"expected true or false, got {describe(row.get(kto_tag))}"))
        return found + _unknown_keys(row, known, hints)

    def check(row: Any) -> Result:
        try:
            ins = row[prompt]
            outs = [row[name] for name in answers]
        except (KeyError, TypeError):
            return explain(row)
        if ins.__class__ is not str:
            return explain(row)
        chars = len(ins)
        for out in outs:
            if out.__class__ is not str or not out:
                return explain(row)
            chars += len(out)
        value = row.get(query)
        if value is not None:
            if value.__class__ is not str:
                return explain(row)
            chars += len(value)
        if not ins and not value:
            return explain(row)
        value = row.get(system)
        if value is not None:
            if value.__class__ is not str:
                return explain(row)
            chars += len(value)
        turns = 1
        value = row.get(history)
        if value is not None:
            if value.__class__ is not list:
                return explain(row)
            for pair in value:
                if pair.__class__ is not list or len(pair) != 2:
                    return explain(row)
                first, second = pair
                if first.__class__ is not str or second.__class__ is not str:
                    return explain(row)
                chars += len(first) + len(second)
            turns += len(value)
        if (kto_required or kto_tag in row) and row.get(kto_tag).__class__ is not bool:
            return explain(row)
        if not row.keys() <= known and _unknown_keys(row, known, hints):
            return explain(row)
        return chars, turns

    return check


def _messages(
    columns: Mapping[str, str], tags: Mapping[str, str], ranking: bool, kto_required: bool, openai: bool
) -> RowCheck:
    """sharegpt and openai: a list of role/content messages, optional system first, roles alternating."""
    messages, system, kto_tag = columns["messages"], columns["system"], columns["kto_tag"]
    chosen, rejected = columns["chosen"], columns["rejected"]
    role, content = tags["role_tag"], tags["content_tag"]
    user, assistant, system_tag = tags["user_tag"], tags["assistant_tag"], tags["system_tag"]
    observation, function = tags["observation_tag"], tags["function_tag"]
    odd, even = (user, observation), (assistant, function)
    all_roles = [user, assistant, observation, function, system_tag]
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

    def explain(row: Any) -> list[Finding]:
        if not isinstance(row, dict):
            return [(None, f"a row must be a JSON object, got {describe(row)}")]
        found: list[Finding] = []
        turns = row.get(messages)
        if messages not in row:
            shape = next((key for key in ("conversations", "messages", "instruction") if key in row), None)
            hint = ""
            if shape == "instruction":
                hint = " (the row has 'instruction': try --formatting alpaca)"
            elif shape:
                hint = f" (the row has '{shape}': try --columns messages={shape} or another --formatting)"
            return [(messages, "missing" + hint)]
        elif not isinstance(turns, list) or not turns:
            found.append((messages, f"expected a non-empty list of messages, got {describe(turns)}"))
        else:
            start = 0
            for index, message in enumerate(turns):
                where = f"{messages}[{index}]"
                if not isinstance(message, dict):
                    expected = f"an object with '{role}' and '{content}'"
                    found.append((where, f"expected {expected}, got {describe(message)}"))
                    continue
                for key in (role, content):
                    if key not in message:
                        found.append((where, f"missing '{key}'{did_you_mean(key, list(message))}"))
                text = message.get(content)
                if content in message and not isinstance(text, str):
                    if not (openai and text is None and message.get("tool_calls")):
                        found.append((f"{where}.{content}", f"expected a string, got {describe(text)}"))
                name = message.get(role)
                if role in message and name not in all_roles:
                    hint = did_you_mean(str(name), all_roles)
                    found.append(
                        (
                            f"{where}.{role}",
                            f"unknown role {describe(name)}; expected one of {', '.join(all_roles)}{hint}",
                        )
                    )
            if found:
                return found + _unknown_keys(row, known, hints)
            if turns[0].get(role) == system_tag:
                start = 1
            order = merged(turns[start:])
            for position, (index, name) in enumerate(order):
                allowed = odd if position % 2 == 0 else even
                if name not in allowed:
                    found.append(
                        (
                            f"{messages}[{index + start}].{role}",
                            f"'{name}' out of order: turn {position + 1} must be "
                            f"{' or '.join(repr(tag) for tag in allowed)} (roles alternate after an "
                            f"optional first '{system_tag}')",
                        )
                    )
                    break
            if not found:
                if ranking and len(order) % 2 == 0:
                    found.append(
                        (
                            messages,
                            f"{len(order)} turn(s): a preference row must end with a "
                            f"'{user}' turn, answered by '{chosen}' and '{rejected}'",
                        )
                    )
                elif not ranking and (len(order) % 2 or not order):
                    found.append(
                        (
                            messages,
                            f"{len(order)} turn(s): it must end with an answer from "
                            f"'{assistant}' (an even count after any system prompt)",
                        )
                    )
        if ranking:
            for name in (chosen, rejected):
                answer = row.get(name)
                if not (
                    isinstance(answer, dict)
                    and answer.get(role) in even
                    and isinstance(answer.get(content), str)
                ):
                    found.append(
                        (
                            name,
                            f"expected an object with '{role}': '{assistant}' and a string "
                            f"'{content}', got {describe(answer)}",
                        )
                    )
        if row.get(system) is not None and not isinstance(row[system], str):
            found.append((system, f"expected a string, got {describe(row[system])}"))
        if kto_tag in row or kto_required:
            if not isinstance(row.get(kto_tag), bool):
                found.append((kto_tag, f"expected true or false, got {describe(row.get(kto_tag))}"))
        return found + _unknown_keys(row, known, hints)

    def check(row: Any) -> Result:
        if explain_needed(row):
            return explain(row)
        turns = row[messages]
        chars = 0
        for message in turns:
            text = message.get(content)
            if text.__class__ is str:
                chars += len(text)
        count = len(turns) - (1 if turns[0].get(role) == system_tag else 0)
        value = row.get(system)
        if value.__class__ is str:
            chars += len(value)
        return chars, (count + 1) // 2

    def explain_needed(row: Any) -> bool:
        if row.__class__ is not dict:
            return True
        turns = row.get(messages)
        if turns.__class__ is not list or not turns:
            return True
        start = 1 if turns[0].__class__ is dict and turns[0].get(role) == system_tag else 0
        if openai:
            return bool(explain(row))
        position = 0
        for message in turns[start:] if start else turns:
            if message.__class__ is not dict or message.get(content).__class__ is not str:
                return True
            if message.get(role) not in (odd if position % 2 == 0 else even):
                return True
            position += 1
        if (position % 2 == 0) == ranking or (not ranking and position == 0):
            return True
        if ranking or kto_required or kto_tag in row:
            return bool(explain(row))
        value = row.get(system)
        if value is not None and value.__class__ is not str:
            return True
        return not row.keys() <= known and bool(_unknown_keys(row, known, hints))

    return check


def row_checker(
    formatting: str,
    *,
    ranking: bool = False,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> RowCheck:
    """The row check for a formatting; `columns` / `tags` override LLaMA-Factory's defaults."""
    base_columns, base_tags = defaults(formatting)
    kto_required = bool(columns and "kto_tag" in columns)
    base_columns.update(columns or {})
    base_tags.update(tags or {})
    if formatting == "alpaca":
        return _alpaca(base_columns, ranking, kto_required)
    return _messages(base_columns, base_tags, ranking, kto_required, openai=formatting == "openai")
