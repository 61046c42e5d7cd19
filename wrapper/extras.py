"""The optional extras (pyproject.toml) and the modules lfwrap imports from each.

A feature whose extra is missing is refused up front in one sentence naming the pip command, instead of
an ImportError halfway through. tests/test_dependencies.py checks this table against pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.util import find_spec

from wrapper.errors import LfwrapError

EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("torch", "transformers", "tokenizers", "llamafactory", "omegaconf", "matplotlib"),
    "rag": ("numpy", "bm25s", "rjieba", "pypdf", "html_to_markdown", "psycopg"),
    "rag-dense": ("sentence_transformers", "transformers"),
    "demo": ("openai",),
}


def missing(extra: str, modules: Iterable[str] | None = None) -> list[str]:
    """The modules of `extra` (or just `modules` of it) this Python cannot import."""
    wanted = EXTRAS[extra] if modules is None else tuple(modules)
    unknown = set(wanted) - set(EXTRAS[extra])
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not modules of the {extra!r} extra")
    return [name for name in wanted if find_spec(name) is None]


def require(extra: str, feature: str, error: type[LfwrapError], modules: Iterable[str] | None = None) -> None:
    """Raise `error` when `feature` cannot run because modules of `extra` are not installed."""
    gone = missing(extra, modules)
    if gone:
        raise error(
            f"{feature} needs {', '.join(gone)}, which this Python cannot import; "
            f"install them with `pip install 'lfwrap[{extra}]'`."
        )
