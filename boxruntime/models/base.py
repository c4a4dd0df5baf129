"""The base of every payload model, and of every request model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic

from boxruntime.models.bounds import unicode_only


class Model(pydantic.BaseModel):
    """A payload model whose validator is built on its first use, not when its module is
    imported: a process loads dozens of models and a one-shot client uses a handful (building
    them all was most of ``boxruntime exec``'s start-up)."""

    model_config = pydantic.ConfigDict(defer_build=True)


class UnicodeFields(pydantic.BaseModel):
    """A request: every string in its fields (keys of maps and items of lists included) must be
    valid Unicode, so nothing with a lone surrogate reaches a path, an argument or a sandbox.
    Keys the model ignores are not looked at."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = cls.model_fields
            unicode_only([value for key, value in data.items() if key in fields])
        return data


class Request(UnicodeFields, Model):
    """The base of the request models (``bounds`` holds the limits their fields check)."""


class OmitNone(Model):
    """A model whose fields named in ``omit_when_none`` are left out of its wire form while they
    are None: the answer it stands for has no such key then (rather than a null)."""

    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @pydantic.model_serializer(mode="wrap")
    def _omit_none(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.omit_when_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data
