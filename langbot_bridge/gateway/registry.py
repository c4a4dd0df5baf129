"""Kinds by name: the agent runners and channels a config may ask for.

Built-in kinds are modules imported only when a config names them (an unused channel costs
nothing); each module exposes its kind as ``KIND``. Other code can ``register`` more kinds
(an extension package, a test) without touching the gateway.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from langbot_bridge.gateway.config import GatewayConfigError


class Named(Protocol):
    @property
    def name(self) -> str: ...


K = TypeVar("K", bound=Named)


class Registry(Generic[K]):
    def __init__(self, what: str, builtin: Mapping[str, str]) -> None:
        self.what = what
        self.builtin = dict(builtin)  # kind -> module that defines KIND
        self._kinds: dict[str, K] = {}

    def register(self, kind: K) -> None:
        self._kinds[kind.name] = kind

    def names(self) -> list[str]:
        return sorted({*self.builtin, *self._kinds})

    def get(self, name: str) -> K:
        if name in self._kinds:
            return self._kinds[name]
        module_name = self.builtin.get(name)
        if module_name is None:
            raise GatewayConfigError(f"unknown {self.what} kind {name!r}; known: {', '.join(self.names())}")
        kind: K = importlib.import_module(module_name).KIND
        self._kinds[name] = kind
        return kind
