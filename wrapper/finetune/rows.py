"""OpenAI's fine-tuning rows, read with pydantic and converted to what LLaMA-Factory reads.

    chat (supervised)   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
    preference (DPO)    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", ...}],
                         "non_preferred_output": [{"role": "assistant", ...}]}

Both become LLaMA-Factory's `sharegpt` formatting with OpenAI's tag names (TAGS): {"messages": [...]}
(plus "tools" as a JSON string), and for preference rows `ranking: true` with "chosen" / "rejected".
Not its `openai` formatting: LLaMA-Factory 0.9.5's converter for that one adds the system prompt
"detailed thinking off" to every row without one, so a model trained that way answers differently when
called without it. An assistant turn with tool_calls becomes a `function_call` turn (the calls as JSON),
consecutive tool results one `tool` turn. The structure LLaMA-Factory needs (roles alternating, the
right turn last) is then checked by the project's dataset row checker.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Kind = Literal["chat", "preference"]
TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    weight: Literal[0, 1] | None = None  # OpenAI's per-turn switch; LLaMA-Factory trains every answer
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None

    def converted(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        calls = [c.get("function", c) for c in self.tool_calls or []] or (
            [self.function_call] if self.function_call else []
        )
        if role == "assistant" and calls:
            role, content = "function_call", json.dumps([_call(c) for c in calls], ensure_ascii=False)
        return {"role": role, "content": content}


def _call(call: dict[str, Any]) -> dict[str, Any]:
    """{"name", "arguments"} with the arguments decoded when they are a JSON string, as LLaMA-Factory's
    tool formats expect."""
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return {"name": call.get("name"), "arguments": arguments}


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        turn = message.converted()
        if turn["role"] == "tool" and out and out[-1]["role"] == "tool":
            out[-1]["content"] = f"{out[-1]['content']}\n{turn['content']}"
            continue
        out.append(turn)
    return out


class ChatRow(_Strict):
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None


class PreferenceInput(_Strict):
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None


class PreferenceRow(_Strict):
    input: PreferenceInput
    preferred_output: list[Message] = Field(min_length=1, max_length=1)
    non_preferred_output: list[Message] = Field(min_length=1, max_length=1)


def kind_of(row: Any) -> Kind | None:
    if isinstance(row, dict):
        if "input" in row or "preferred_output" in row:
            return "preference"
        if "messages" in row:
            return "chat"
    return None


def convert(row: Any, kind: Kind) -> dict[str, Any]:
    """The LLaMA-Factory row for an OpenAI row; pydantic's ValidationError names what is wrong."""
    if kind == "chat":
        chat = ChatRow.model_validate(row)
        out: dict[str, Any] = {"messages": _turns(chat.messages)}
        tools = chat.tools or chat.functions
    else:
        pref = PreferenceRow.model_validate(row)
        out = {
            "messages": _turns(pref.input.messages),
            "chosen": pref.preferred_output[0].converted(),
            "rejected": pref.non_preferred_output[0].converted(),
        }
        tools = pref.input.tools
    if tools:
        out["tools"] = json.dumps(tools, ensure_ascii=False)
    return out


def describe_error(exc: ValidationError) -> list[tuple[str | None, str]]:
    """(field, message) for each problem pydantic found, fields written like messages[1].role."""
    found: list[tuple[str | None, str]] = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            if isinstance(part, int):
                where += f"[{part}]"
            elif part in ("str", "list[TextPart]", "literal[0,1]", "none"):
                continue  # pydantic's union branch names
            else:
                where += f".{part}" if where else str(part)
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if (where or None, message) not in found:
            found.append((where or None, message))
    return found[:5]
