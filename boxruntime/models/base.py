"""The base of every payload model."""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic


class Model(pydantic.BaseModel):
    """A payload model whose validator is built on its first use, not when its module is
    imported: a process loads dozens of models and a one-shot client uses a handful (building
    them all was most of ``boxruntime exec``'s start-up)."""

    model_config = pydantic.ConfigDict(defer_build=True)


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
