"""The base of every payload model."""

from __future__ import annotations

import pydantic


class Model(pydantic.BaseModel):
    """A payload model whose validator is built on its first use, not when its module is
    imported: a process loads dozens of models and a one-shot client uses a handful (building
    them all was most of ``boxruntime exec``'s start-up)."""

    model_config = pydantic.ConfigDict(defer_build=True)
