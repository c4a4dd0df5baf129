"""Every public name of langbot_bridge says what it is: modules, classes, functions, and the
public methods and properties of public classes (``help()`` and editors show these)."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import pkgutil
from types import ModuleType

import langbot_bridge


def public_modules() -> list[ModuleType]:
    names = [info.name for info in pkgutil.walk_packages(langbot_bridge.__path__, "langbot_bridge.")]
    return [langbot_bridge] + [
        importlib.import_module(name) for name in names if not any(p.startswith("_") for p in name.split("."))
    ]


def undocumented(module: ModuleType) -> list[str]:
    missing = [] if module.__doc__ else [module.__name__]
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        inherited = inspect.isclass(obj) and obj.__doc__ == getattr(obj.__mro__[1], "__doc__", None)
        if not obj.__doc__ or inherited:
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if not attr.startswith("_") and inspect.isfunction(function) and not function.__doc__:
                    missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


def test_every_public_name_has_a_docstring() -> None:
    modules = public_modules()
    assert len(modules) > 20
    assert [name for module in modules for name in undocumented(module)] == []


def test_the_package_ships_its_types() -> None:
    assert (importlib.resources.files("langbot_bridge") / "py.typed").is_file()
