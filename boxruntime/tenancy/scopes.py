"""Which sessions a request may see, and how its session ids map to the runtime's.

A LangBot 0.7 request sees the sessions of its placement (``Placement``, logical ids mapped to
physical ones); a request without a context (LangBot 0.5) sees the sessions outside every
placement (``LEGACY``), so neither kind can reach the other's.
"""

from __future__ import annotations

from typing import Any, Protocol

from boxruntime.errors import BoxValidationError
from boxruntime.tenancy.placement import is_physical_id


class SessionScope(Protocol):
    def physical(self, logical_id: str) -> str:
        """The runtime's id for the caller's ``logical_id``; BoxValidationError if it has none."""
        ...

    def owns(self, physical_id: str) -> bool: ...

    def logical(self, physical_id: str) -> str: ...


class LegacyScope:
    """Requests without a context: ids as given, but never one in a workspace's namespace."""

    def physical(self, logical_id: str) -> str:
        if is_physical_id(logical_id.strip()):
            raise BoxValidationError(
                f"session id {logical_id!r} lies in a LangBot workspace namespace (ws-<hex>-g<n>-…); "
                "such sessions are reached only with that workspace's action context"
            )
        return logical_id

    def owns(self, physical_id: str) -> bool:
        return not is_physical_id(physical_id)

    def logical(self, physical_id: str) -> str:
        return physical_id


LEGACY = LegacyScope()


def to_logical(value: Any, scope: SessionScope) -> Any:
    """``value`` with every ``session_id`` (at any depth) turned back into the caller's id."""
    if isinstance(value, list):
        return [to_logical(item, scope) for item in value]
    if not isinstance(value, dict):
        return value
    mapped = {key: to_logical(item, scope) for key, item in value.items()}
    session_id = mapped.get("session_id")
    if isinstance(session_id, str):
        mapped["session_id"] = scope.logical(session_id)
    return mapped
