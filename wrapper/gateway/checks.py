"""Requests LLaMA-Factory's API server would reject, answered 400 with a clear message before they
reach it (its own answers are a terse `{"detail": "Invalid role"}`)."""

from __future__ import annotations

from typing import Any

from wrapper.gateway.oai import ApiError

ROLES = {"system", "user", "assistant", "tool", "function"}
_EVEN = ("user", "tool")  # turns 0, 2, 4 ... after the optional system message
_ODD = ("assistant", "function")
_MEDIA = ("image_url", "video_url", "audio_url")
MAX_MODEL_CHARS = 128  # as ModelRoute.name: anything longer cannot be routed


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: a model name from GET /v1/models.", "model")
    if len(model) > MAX_MODEL_CHARS:
        raise _bad(
            f"'model' is {len(model)} characters; model names have at most {MAX_MODEL_CHARS} "
            "(GET /v1/models lists them).",
            "model",
        )
    return model


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _check_content(index: int, content: Any) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"messages[{index}].content must be a string or a list of content parts.", "messages")
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"messages[{index}].content parts must be objects with a 'type'.", "messages")
        kind = part["type"]
        if kind in _MEDIA:
            url = part.get(kind, {}).get("url") if isinstance(part.get(kind), dict) else None
            if not isinstance(url, str) or not url.startswith("data:"):
                raise _bad(
                    f"messages[{index}]: {kind} must be a base64 data: URL; the gateway does not let "
                    "callers make the model server read files or fetch URLs.",
                    "messages",
                )


def check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content} objects.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] must be an object with 'role' and 'content'.", "messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role)[:40]  # caller-chosen: quoted and cut
            raise _bad(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}, got {shown}.", "messages"
            )
        _check_content(index, message.get("content"))
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for index, message in enumerate(turns):
        expected = _EVEN if index % 2 == 0 else _ODD
        if message["role"] not in expected:
            position = index + (len(messages) - len(turns))
            raise _bad(
                f"messages[{position}] has role {message['role']!r} where {expected[0]!r} was expected: "
                "LLaMA-Factory takes an optional system message, then user and assistant turns "
                "alternating, ending with a user turn.",
                "messages",
            )
    if len(turns) % 2 == 0:
        raise _bad(
            "The conversation must end with a user (or tool) turn: LLaMA-Factory answers "
            "user/assistant/.../user with an odd number of turns after the system message.",
            "messages",
        )


def check_chat(body: Any) -> tuple[str, bool, bool]:
    """Validate a chat request; returns (model, stream, include_usage)."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "body")
    model = _model(body)
    check_messages(body.get("messages"))
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise _bad(
            f"n={n!r} is not supported: LLaMA-Factory's server returns one choice per request; send n=1 "
            "or several requests.",
            "n",
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r}.", "stream")
    if stream and body.get("tools"):
        raise _bad(
            "'tools' cannot be combined with stream=true on LLaMA-Factory's server; send stream=false.",
            "stream",
        )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object such as {\"include_usage\": true}.", "stream_options")
    include_usage = bool(stream and options and options.get("include_usage"))
    return model, stream, include_usage


def check_score(body: Any) -> str:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "body")
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, str) for m in messages):
        raise _bad("'messages' must be a non-empty list of strings to score.", "messages")
    return model
