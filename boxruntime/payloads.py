"""Validation into a model and dumping, for the checks that read a request before its handler
does (the strict spec check, admission's normalised spec). Handlers get their requests parsed
by the action table (``boxruntime.action_table``)."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from boxruntime.errors import BoxValidationError

M = TypeVar("M", bound=pydantic.BaseModel)


def parse(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; a pydantic failure becomes BoxValidationError with its full text."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise BoxValidationError(str(exc)) from None


def dump(model: pydantic.BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
