"""A request message into its model, or ``invalid_argument`` saying what is wrong with it."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from boxruntime.edges.e2b.connect import ConnectError

M = TypeVar("M", bound=pydantic.BaseModel)


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ConnectError("invalid_argument", f"invalid {model.__name__}: {problems}") from None
