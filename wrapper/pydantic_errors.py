"""pydantic's ValidationError as the one-line problems lfwrap shows users.

messages(exc, GatewaySettings)          # ["models.0.upstrem: unknown key (did you mean 'upstream'?)", ...]
fields_at(Model, error["loc"])          # the keys allowed beside an unknown one
loc_text(error["loc"])                  # "models.0.rag.index"
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from wrapper.suggest import did_you_mean


def loc_text(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (Model, Model | None, list[Model], dict[str, Model] ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


def fields_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names of the (nested) model that holds `loc`'s last part: what an unknown key could
    have meant. List indexes, dict keys and pydantic's union branch names in `loc` are stepped over."""
    current = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        inner = _models(field.annotation) if field is not None else []
        if inner:
            current = inner[0]
    return list(current.model_fields)


def message(error: Any, model: type[BaseModel], *, prefix: str = "", top: str = "(top level)") -> str:
    """'WHERE: unknown key (did you mean ...?)' for a forbidden extra key, else 'WHERE: pydantic's
    message'; WHERE is `prefix` and the dotted location (`top` when the error is about the whole input)."""
    loc = tuple(error["loc"])
    where = prefix + (loc_text(loc) or top)
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key{did_you_mean(str(loc[-1]), fields_at(model, loc))}"
    return f"{where}: {error['msg']}"


def messages(
    exc: ValidationError, model: type[BaseModel], *, prefix: str = "", top: str = "(top level)"
) -> list[str]:
    return [message(error, model, prefix=prefix, top=top) for error in exc.errors()]


def first_message(exc: ValidationError, top: str) -> str:
    """'WHERE: pydantic's message' for the first problem only (a row of a file: one line is enough)."""
    error = exc.errors()[0]
    return f"{loc_text(error['loc']) or top}: {error['msg']}"


def repeated(names: Iterable[str]) -> list[str]:
    """The names that appear more than once, sorted: for a validator refusing two entries of one name."""
    seen = list(names)
    return sorted({name for name in seen if seen.count(name) > 1})
