"""``boxruntime.models`` loads its areas on first use: every exported name must resolve, and
every model an area defines must be exported (a name added to an area but not to the package's
``_AREAS`` would type-check and then fail at run time)."""

from __future__ import annotations

import importlib
import inspect

import pydantic

import boxruntime.models as models

AREAS = ("answers", "box", "files", "interactive", "skills", "tenancy")


def test_every_exported_name_resolves() -> None:
    assert sorted(models._AREAS) == sorted(models.__all__)
    for name in models.__all__:
        assert getattr(models, name) is getattr(importlib.import_module(models._AREAS[name]), name)


def test_every_model_of_an_area_is_exported() -> None:
    for area in AREAS:
        module = importlib.import_module(f"boxruntime.models.{area}")
        defined = {
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and inspect.isclass(obj)
            and issubclass(obj, pydantic.BaseModel)
            and obj.__module__ == module.__name__
        }
        assert defined - set(models.__all__) == set(), area
