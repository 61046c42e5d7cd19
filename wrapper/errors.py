"""Every error lfwrap raises on purpose.

    LfwrapError                 base; the CLI prints str(error) as one sentence and exits 1
    ├── UsageError              bad command-line input (unknown template, malformed --set, bad name);
    │                           exits 2, like click's own usage errors
    ├── ConfigError             a config that fails validation; carries the full list of problems
    ├── DatasetError            a dataset file or dataset_info.json that is malformed
    ├── RunError                a run directory that is missing, busy or in the wrong state
    ├── LaunchError             a launcher could not start or follow LLaMA-Factory (local or Docker)
    ├── GatewayError            gateway settings or key store problems
    ├── FineTuneError           a fine-tuning file or job request refused (OpenAI code, param, status)
    └── RagError                documents that cannot be indexed, a bad question file
        ├── IndexMissingError   no retrieval index of that name (raised when opening it)
        └── IndexBrokenError    an index folder or database that cannot be read (raised when opening it)

Anything else reaching the CLI is a bug: it is shown with its traceback only under --debug.
"""

from __future__ import annotations

from dataclasses import dataclass


class LfwrapError(Exception):
    """Base class: the message is a complete sentence meant for the user."""


class UsageError(LfwrapError):
    pass


@dataclass(frozen=True)
class Problem:
    """One finding of a validator: where, what, and how bad."""

    message: str
    file: str | None = None
    line: int | None = None
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.severity}: {self.message}"


class ConfigError(LfwrapError):
    """A config failed validation; `problems` holds every finding, errors and warnings."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


class DatasetError(LfwrapError):
    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


class RunError(LfwrapError):
    pass


class LaunchError(LfwrapError):
    pass


class GatewayError(LfwrapError):
    pass


class FineTuneError(LfwrapError):
    """A refused fine-tuning request, ready for OpenAI's error shape {message, type, param, code}:
    `status` is the HTTP status the gateway answers with (400 bad request, 404 unknown id, 409 state)."""

    def __init__(self, message: str, *, code: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.code = code
        self.param = param
        self.status = status


class RagError(LfwrapError):
    pass


class IndexMissingError(RagError):
    pass


class IndexBrokenError(RagError):
    pass
