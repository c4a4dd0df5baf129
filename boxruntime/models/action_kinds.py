"""What a catalogue entry is (``boxruntime.models.actions`` holds the entries).

An action answers once (``Unary``) or streams items and then ends (``Streamed``). Its payload
types are ``Shape``s: a model (or a union of models, or a plain JSON object) named by a function
that is called on first use, so the catalogue can be imported without loading the model modules
(a client that only runs commands never loads the skill models).
"""

from __future__ import annotations

import enum
import functools
import operator
from collections.abc import Callable
from typing import Annotated, Any, Final, Generic, TypeVar, cast

import pydantic

Payload = dict[str, Any]
T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)
Q = TypeVar("Q")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741 - a stream's item


class Kind(enum.Enum):
    """An action's class under LangBot 0.7's tenancy rules (reference §B.2); the daemon's gate
    (``boxruntime.tenancy.gate``) applies them."""

    HOST_CONTROL = "host-control"  # about the daemon: an optional context, the trusted instance's
    TENANT = "tenant"  # a 0.7 client needs a context; session ids are mapped, the fence applies
    SANDBOX = "sandbox"  # a tenant action that reaches a sandbox: under admission it needs a grant


class Shape(Generic[T]):
    """The type of a request, an answer or a stream item, resolved when first used."""

    def __init__(self, resolve: Callable[[], Any]) -> None:
        self._resolve = resolve

    @functools.cached_property
    def type(self) -> Any:
        """The model (or type expression) itself."""
        return self._resolve()

    @functools.cached_property
    def _adapter(self) -> pydantic.TypeAdapter[T] | None:
        # A model validates and dumps itself; a union or a plain type needs an adapter (built
        # here, on first use: building one builds its models' validators at once).
        if isinstance(self.type, type) and issubclass(self.type, pydantic.BaseModel):
            return None
        return pydantic.TypeAdapter(self.type)

    def parse(self, data: object) -> T:
        """``data`` as this shape; raises ``pydantic.ValidationError``."""
        adapter = self._adapter
        if adapter is None:
            return cast(T, self.type.model_validate(data))
        return adapter.validate_python(data)

    def dump(self, value: T) -> Payload:
        """``value`` as the wire's JSON object."""
        if isinstance(value, pydantic.BaseModel):
            return value.model_dump(mode="json")
        adapter = self._adapter
        assert adapter is not None  # a model's shape holds model instances only
        dumped: Payload = adapter.dump_python(value, mode="json")
        return dumped


def model(resolve: Callable[[], type[M]]) -> Shape[M]:
    """The shape of one model (``resolve`` returns the class)."""
    return Shape(resolve)


def one_of(*models: type[pydantic.BaseModel]) -> Any:
    """A union tried left to right: the first model that accepts the data wins (list the one
    with more required fields first)."""
    union: Any = functools.reduce(operator.or_, models)
    return Annotated[union, pydantic.Field(union_mode="left_to_right")]


def tagged(*models: type[pydantic.BaseModel]) -> Any:
    """A union told apart by each model's ``kind`` literal (stream items)."""
    union: Any = functools.reduce(operator.or_, models)
    return Annotated[union, pydantic.Field(discriminator="kind")]


class Unary(Generic[Q, R]):
    """An action that answers once.

    ``timeout``: how long our client waits for the answer (for a command, on top of its own time
    limit). ``langbot_timeout``: how long LangBot's client does, where LangBot calls the action
    (reference §B.1, §B.2, §E.7); None for ours.
    """

    # A plain class, not a dataclass: the catalogue is imported by every client at start-up.
    __slots__ = ("kind", "langbot_timeout", "name", "request", "response", "timeout")

    def __init__(
        self,
        name: str,
        request: Shape[Q],
        response: Shape[R],
        kind: Kind,
        *,
        timeout: float,
        langbot_timeout: float | None = None,
    ) -> None:
        self.name: Final = name
        self.request: Final = request
        self.response: Final = response
        self.kind: Final = kind
        self.timeout: Final = timeout
        self.langbot_timeout: Final = langbot_timeout

    def __repr__(self) -> str:
        return f"Unary({self.name!r})"


class Streamed(Generic[Q, I]):
    """An action that answers with items, then an end message. ``timeout`` bounds each wait for
    the next item (for a command, on top of its own time limit)."""

    __slots__ = ("items", "kind", "langbot_timeout", "name", "request", "timeout")

    def __init__(
        self,
        name: str,
        request: Shape[Q],
        items: Shape[I],
        kind: Kind,
        *,
        timeout: float,
        langbot_timeout: float | None = None,
    ) -> None:
        self.name: Final = name
        self.request: Final = request
        self.items: Final = items
        self.kind: Final = kind
        self.timeout: Final = timeout
        self.langbot_timeout: Final = langbot_timeout

    def __repr__(self) -> str:
        return f"Streamed({self.name!r})"


Action = Unary[Any, Any] | Streamed[Any, Any]
