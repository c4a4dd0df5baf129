"""Session ids from templates over chat context variables (``"{launcher_type}_{launcher_id}"``).

A template decides how chats share sandboxes: one per chat window, one per user in a group,
one per conversation ... Two different chats must never land in the same sandbox by accident,
so rendering is injective:

- A variable's value is kept as it is when it only holds letters, digits and ``-``.
- Anything else (``_``, ``/``, spaces, non-ASCII ...) is unsafe: each run of such characters
  becomes ``-`` and the id gets a ``.<16 hex>`` suffix, a hash of the template and every raw
  value. ``.`` appears nowhere else in an id, so hashed and plain ids never meet.
- Between two variables the template must put a separator that contains ``_``; values never
  hold ``_``, so where each value ends can be read back from the id.

LangBot fills a missing variable with ``unknown``, which quietly puts every chat without, say,
a sender id into one shared sandbox. Here a missing variable is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass

import pydantic

from boxruntime.errors import BoxValidationError

DEFAULT_TEMPLATE = "{launcher_type}_{launcher_id}"
MAX_ID_CHARS = 128
HASH_CHARS = 16

_PLAIN_VALUE = re.compile(r"[A-Za-z0-9-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9-]+")
_LITERAL = re.compile(r"[A-Za-z0-9_-]*")


class ChatContext(pydantic.BaseModel):
    """Who is talking where: the variables a session id template may use.

    Every field is optional because platforms fill different ones; numbers are accepted and
    kept as their decimal text.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    launcher_type: str | None = None  # "person" or "group"
    launcher_id: str | None = None
    sender_id: str | None = None
    conversation_id: str | None = None
    query_id: str | None = None
    platform: str | None = None
    group_id: str | None = None
    user_id: str | None = None

    def variables(self) -> dict[str, str]:
        """The variables that are set (empty strings count as unset)."""
        return {name: value for name, value in self.model_dump().items() if value}


TEMPLATE_VARIABLES: tuple[str, ...] = tuple(ChatContext.model_fields)


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    """A parsed, checked template: literal text and variable names, alternating."""

    text: str
    literals: tuple[str, ...]  # len(variables) + 1 pieces
    variables: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SessionTemplate:
        """The template ``text``; BoxValidationError for an empty one or an unknown variable."""
        if not text or not text.strip():
            raise BoxValidationError("the session id template is empty")
        literals: list[str] = []
        variables: list[str] = []
        pending = ""
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise BoxValidationError(f"session id template {text!r} is malformed: {exc}") from None
        for literal, field, spec, conversion in parts:
            pending += literal
            if field is None:
                continue
            if field not in TEMPLATE_VARIABLES:
                shown = "{" + field + "}" if field else "{}"
                known = ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES)
                raise BoxValidationError(
                    f"session id template {text!r} uses unknown variable {shown}; known variables: {known}"
                )
            if spec or conversion:
                raise BoxValidationError(
                    f"session id template {text!r}: {{{field}}} must not have a format spec or conversion"
                )
            literals.append(pending)
            variables.append(field)
            pending = ""
        literals.append(pending)
        for literal in literals:
            if not _LITERAL.fullmatch(literal):
                raise BoxValidationError(
                    f"session id template {text!r}: literal text {literal!r} may only hold letters, digits, '_' and '-'"
                )
        for between in literals[1:-1]:
            if "_" not in between:
                raise BoxValidationError(
                    f"session id template {text!r}: variables must be separated by text containing '_' "
                    "(e.g. {launcher_type}_{launcher_id}), or two chats could get the same id"
                )
        return cls(text, tuple(literals), tuple(variables))

    def render(self, context: ChatContext) -> str:
        """The session id for ``context``; BoxValidationError when a variable it needs is unset."""
        values = context.variables()
        missing = [name for name in self.variables if name not in values]
        if missing:
            names = ", ".join(missing)
            raise BoxValidationError(
                f"session id template {self.text!r} needs {names}, which this chat context does not provide"
            )
        raw = [values[name] for name in self.variables]
        hashed = False
        pieces = [self.literals[0]]
        for value, literal in zip(raw, self.literals[1:], strict=True):
            if not _PLAIN_VALUE.fullmatch(value):
                hashed = True
                value = _UNSAFE_RUN.sub("-", value)
            pieces += [value, literal]
        rendered = "".join(pieces)
        if not hashed and len(rendered) <= MAX_ID_CHARS:
            return rendered
        digest = hashlib.sha256(json.dumps([self.text, raw]).encode("utf-8", "surrogatepass")).hexdigest()
        return f"{rendered[: MAX_ID_CHARS - HASH_CHARS - 1]}.{digest[:HASH_CHARS]}"


def resolve_session_id(template: str, context: ChatContext) -> str:
    """The session id ``template`` gives for ``context``; BoxValidationError says what is wrong."""
    return SessionTemplate.parse(template).render(context)
