""" "Did you mean": the closest known name to a misspelled one, for every message that offers one.

closest("formating", FIELDS)                      # "formatting", or None when nothing is close
did_you_mean("formating", FIELDS)                 # " (did you mean 'formatting'?)", or ""
did_you_mean(name, routes, SENTENCE)              # " Did you mean 'conch'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

PAREN = " (did you mean '{}'?)"
PAREN_CODE = " (did you mean `{}`?)"  # Markdown-ish messages that quote names in backticks
SENTENCE = " Did you mean {!r}?"  # after a full sentence


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one choice most like `word` (difflib's ratio of at least 0.6), or None."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, choices: Iterable[str], template: str = PAREN) -> str:
    """`template` filled with the closest choice, or '' when nothing is close."""
    match = closest(word, choices)
    return template.format(match) if match is not None else ""
