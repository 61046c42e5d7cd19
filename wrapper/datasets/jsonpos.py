"""Line numbers of the keys in a JSON text, so problems can point at file:line.

`key_lines(text)` maps each key path, e.g. ("identity", "columns", "prompt"), to the line its key
starts on. It is a small tokenizer, not a parser: call it on text that json.loads accepted.
"""

from __future__ import annotations

import json
import re

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    path: list[str] = []
    # one frame per open container: ("{", key-pushed?) or ("[", index)
    stack: list[list] = []
    line = 1
    pos = 0
    pending_key: tuple[str, int] | None = None
    for match in _TOKEN.finditer(text):
        line += text.count("\n", pos, match.start())
        pos = match.start()
        token = match.group()
        if token == ":" and pending_key is not None:
            key, key_line = pending_key
            frame = stack[-1]
            if frame[1]:
                path.pop()
            path.append(key)
            frame[1] = True
            lines.setdefault(tuple(path), key_line)
            pending_key = None
        elif token[0] == '"':
            pending_key = (json.loads(token), line) if stack and stack[-1][0] == "{" else None
        elif token in "{[":
            stack.append([token, False])
        elif token in "}]":
            closed = stack.pop() if stack else None
            if closed is not None and closed[0] == "{" and closed[1]:
                path.pop()
            pending_key = None
        else:
            pending_key = None
    return lines


def line_of(lines: dict[tuple[str, ...], int], *path: str) -> int | None:
    """The line of the longest known prefix of `path` (the key itself, else its parent)."""
    for end in range(len(path), 0, -1):
        found = lines.get(tuple(path[:end]))
        if found is not None:
            return found
    return None
