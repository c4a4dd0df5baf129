"""Typed errors.

The class names are part of the wire contract: LangBot's client classifies an error by
finding ``"<ClassName>:"`` in the response message, so these names must match LangBot's
(reference §A.5, §C.9). The protocol edge (``boxruntime.protocol.envelope``) is the only place
an error becomes a string; ``error_from_message`` turns the string back into the same type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydantic


class BoxError(RuntimeError):
    """Base error for every Box failure."""


class BoxValidationError(BoxError):
    """The request is malformed or not allowed (bad spec, blocked mount, bad id ...)."""


class BoxBackendUnavailableError(BoxError):
    """No sandbox backend can serve the request."""


class BoxRuntimeUnavailableError(BoxError):
    """The runtime is not reachable or is shutting down."""


class BoxSessionConflictError(BoxError):
    """An existing session cannot satisfy the new request."""


class BoxSessionNotFoundError(BoxError):
    """A referenced session does not exist."""


class BoxManagedProcessConflictError(BoxError):
    """A managed process is not in the state the request needs."""


class BoxManagedProcessNotFoundError(BoxError):
    """A referenced managed process does not exist."""


class BoxCapacityExceededError(BoxError):
    """A configured capacity (sessions, processes, connections) is reached."""


class BoxAdmissionError(BoxError):
    """Admission control refused the request (LangBot 0.7 name, kept for symmetry)."""


class BoxReadinessError(BoxError):
    """The runtime is not ready for the request (LangBot 0.7 name, kept for symmetry)."""


class BoxPermissionError(BoxError):
    """The caller may not do this: a tenant context that is missing, names another instance or
    a stale placement generation. On the wire it is LangBot 0.7's ``PermissionError: ...``."""

    wire = "PermissionError"


class BoxImageNotFoundError(BoxError):
    """The sandbox image is not available locally and could not be fetched."""


class BoxSandboxError(BoxError):
    """The sandbox itself failed (engine error, agent lost, container gone)."""


class BoxAuthError(BoxError):
    """The peer refused our credentials (client side: HTTP 401 on the upgrade)."""


class BoxActionNotFoundError(BoxError):
    """The peer does not serve the requested action."""


class ActionCallError(BoxError):
    """A remote action failed with an error class we do not know."""


class ActionCallTimeoutError(BoxError):
    """A remote action did not answer within the caller's timeout."""


class ConnectionClosedError(BoxRuntimeUnavailableError):
    """The connection to the peer closed before the answer arrived."""


# Order matters: LangBot 0.7 checks prefixes in this order and the first match wins.
_WIRE_ERRORS: tuple[type[BoxError], ...] = (
    BoxAdmissionError,
    BoxReadinessError,
    BoxCapacityExceededError,
    BoxValidationError,
    BoxSessionNotFoundError,
    BoxSessionConflictError,
    BoxManagedProcessNotFoundError,
    BoxManagedProcessConflictError,
    BoxBackendUnavailableError,
    BoxRuntimeUnavailableError,
    BoxImageNotFoundError,
    BoxSandboxError,
    BoxAuthError,
    BoxActionNotFoundError,
    ActionCallTimeoutError,
    ConnectionClosedError,
    ActionCallError,
)


def wire_name(exc: BaseException) -> str:
    """The class name a client will recognise: internal subclasses (e.g. an agent's refusal,
    a BoxValidationError) go over the wire as their nearest public ancestor."""
    if isinstance(exc, BoxPermissionError):
        return BoxPermissionError.wire
    if isinstance(exc, BoxError):
        for cls in type(exc).__mro__:
            if cls in _WIRE_ERRORS or cls is BoxError:
                return cls.__name__
    return type(exc).__name__


def error_from_message(message: str) -> BoxError:
    """Rebuild the typed error from a ``"<ClassName>: text"`` wire message.

    Only a class name at the start of the message counts, so a message that merely quotes
    another error's name further on keeps its own class.
    """
    head, sep, _ = message.partition(": ")
    if sep:
        for cls in _WIRE_ERRORS:
            if head == cls.__name__:
                return cls(message)
        if head == BoxError.__name__:
            return BoxError(message)
        if head == BoxPermissionError.wire:
            return BoxPermissionError(message)
    return ActionCallError(message)


def validation_summary(exc: pydantic.ValidationError) -> str:
    """What a pydantic validation error says, without the values it refused: ``str(exc)`` echoes
    each input, and an input may be a token or an API key."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)
