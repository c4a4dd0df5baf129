"""The daemon's action table: each handler bound to its catalogue entry (``boxruntime.models.actions``).

A handler takes the entry's request model and returns its answer model (or yields its stream
items); this module is the one place that turns wire data into the request, and the answer into
wire data, for every action. A request that does not fit its model is a ``BoxValidationError``
with pydantic's full text (LangBot 0.5's behaviour); unknown keys are ignored where the model
ignores them.

It is also where an answer's error is typed: an exception that is not a Box error (a bug, an
SDK's error a backend failed to map) is logged with its traceback and reaches the client as
``BoxError: internal error ...`` (LangBot's base class), never under a foreign class name.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import pydantic

from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.models.action_kinds import Action, Streamed, Unary
from boxruntime.protocol import ActionHandler, Payload

Q = TypeVar("Q")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741 - a stream's item
C = TypeVar("C")  # what a scoped view gets besides the request (the caller's session scope)

log = logging.getLogger(__name__)


def typed(action: Action, exc: Exception) -> BoxError:
    """``exc`` as the Box error the client gets; one that is not a Box error already is a bug
    of ours (or a backend's unmapped exception): logged here with its traceback."""
    if isinstance(exc, BoxError):
        return exc
    log.error("%s: unexpected %s", action.name, type(exc).__name__, exc_info=exc)
    return BoxError(f"internal error in {action.name}: {type(exc).__name__}: {exc}")


def parse_request(action: Action, data: Payload) -> Any:
    """``data`` as the action's request model; BoxValidationError with pydantic's text otherwise."""
    try:
        return action.request.parse(data)
    except pydantic.ValidationError as exc:
        raise BoxValidationError(str(exc)) from None


def serve_unary(action: Unary[Q, R], handler: Callable[[Q], Awaitable[R]]) -> ActionHandler:
    """``handler`` on the wire: the request parsed, the answer dumped."""

    async def serve(data: Payload) -> Payload:
        request: Q = parse_request(action, data)
        try:
            return action.response.dump(await handler(request))
        except Exception as exc:
            raise typed(action, exc) from exc

    return serve


def serve_streamed(action: Streamed[Q, I], handler: Callable[[Q], AsyncGenerator[I, None]]) -> ActionHandler:
    """A streamed ``handler`` on the wire; closing the stream (the client left, the request was
    cancelled) closes the handler at once, so its cleanup runs now rather than when collected."""

    async def serve(data: Payload) -> AsyncIterator[Payload]:
        request: Q = parse_request(action, data)
        items = handler(request)
        try:
            async for item in items:
                yield action.items.dump(item)
        except Exception as exc:
            raise typed(action, exc) from exc
        finally:
            await items.aclose()

    return serve


def serve_scoped(
    action: Unary[Q, R], view: Callable[[Q, C], Awaitable[R]]
) -> Callable[[Payload, C], Awaitable[Payload]]:
    """A view that answers differently per caller (the tenancy's), on the wire."""

    async def serve(data: Payload, scope: C) -> Payload:
        request: Q = parse_request(action, data)
        try:
            return action.response.dump(await view(request, scope))
        except Exception as exc:
            raise typed(action, exc) from exc

    return serve


class ActionTable:
    """The handlers of one control connection, by catalogue entry."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Action, Callable[[Any], Any]]] = {}

    def unary(self, action: Unary[Q, R], handler: Callable[[Q], Awaitable[R]]) -> None:
        self._add(action, handler)

    def streamed(self, action: Streamed[Q, I], handler: Callable[[Q], AsyncGenerator[I, None]]) -> None:
        self._add(action, handler)

    def replace(self, action: Unary[Q, R], handler: Callable[[Q], Awaitable[R]]) -> None:
        """Serve ``action`` with ``handler`` instead of the handler it has (a layer on top, such
        as the tenancy, that may call the one it replaces: ``handler(action)`` first)."""
        if action.name not in self._handlers:
            raise KeyError(f"{action.name} has no handler to replace")
        self._handlers[action.name] = (action, handler)

    def handler(self, action: Unary[Q, R]) -> Callable[[Q], Awaitable[R]]:
        """The handler bound to ``action`` (typed as the entry says: it was bound through it)."""
        return cast(Callable[[Q], Awaitable[R]], self._handlers[action.name][1])

    def update(self, other: ActionTable) -> None:
        """Add every handler of ``other`` (whose actions this table must not serve yet)."""
        for action, handler in other._handlers.values():
            self._add(action, handler)

    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def wire(self) -> dict[str, ActionHandler]:
        """The table as the Peer serves it: action name -> wire handler."""
        served: dict[str, ActionHandler] = {}
        for name, (action, handler) in self._handlers.items():
            if isinstance(action, Streamed):
                served[name] = serve_streamed(action, handler)
            else:
                served[name] = serve_unary(action, handler)
        return served

    def _add(self, action: Action, handler: Callable[[Any], Any]) -> None:
        if action.name in self._handlers:
            raise ValueError(f"{action.name} already has a handler")
        self._handlers[action.name] = (action, handler)
