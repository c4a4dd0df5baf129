"""Action-RPC envelope: what a message is, and how errors become text (reference §A.2, §A.5).

Pure functions over already-parsed JSON objects; no I/O. A message with ``action`` is a
request, one with ``code`` is a response, anything else is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from boxruntime.errors import BoxError, wire_name

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_ERROR_CHARS = 4096
ERROR_TRUNCATION_MARKER = "... [protocol error truncated]"

ChunkStatus = Literal["continue", "end"]


@dataclass(frozen=True, slots=True)
class Request:
    seq_id: int
    action: str
    data: dict[str, Any]
    # LangBot 0.7's tenant authority (reference §A.2, §A.9): the raw object, checked by the
    # daemon's tenancy gate; None when the request carries none (every LangBot 0.5 request).
    context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    seq_id: int
    code: int
    message: str
    data: dict[str, Any]
    chunk_status: ChunkStatus


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request we can answer (it has a seq_id) but not serve: its shape is wrong."""

    seq_id: int
    action: str
    reason: str


Message = Request | Response | BadRequest


def _seq_id(obj: dict[str, Any]) -> int:
    value = obj.get("seq_id", -1)
    # bool is an int subclass; a seq_id of true is not a number anyone meant.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return -1


def classify(obj: dict[str, Any]) -> Message | None:
    """Turn one decoded JSON object into a message, or None when it is neither kind."""
    if "action" in obj:
        seq_id = _seq_id(obj)
        action = obj["action"]
        if not isinstance(action, str) or not action:
            return BadRequest(seq_id, str(action), "'action' must be a non-empty string")
        data = obj.get("data")
        if not isinstance(data, dict):
            return BadRequest(seq_id, action, "request 'data' must be a JSON object")
        context = obj.get("context")
        if context is not None and not isinstance(context, dict):
            return BadRequest(seq_id, action, "request 'context' must be a JSON object")
        return Request(seq_id, action, data, context)
    if "code" in obj:
        code = obj["code"]
        data = obj.get("data")
        status = obj.get("chunk_status", "continue")
        if not isinstance(code, int) or isinstance(code, bool):
            return None
        return Response(
            seq_id=_seq_id(obj),
            code=code,
            message=str(obj.get("message", "")),
            data=data if isinstance(data, dict) else {},
            chunk_status="end" if status == "end" else "continue",
        )
    return None


def encode(obj: dict[str, Any]) -> str:
    """Serialise like Python's ``json.dumps`` defaults, as LangBot does: pure ASCII."""
    return json.dumps(obj)


def request(seq_id: int, action: str, data: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"seq_id": seq_id, "action": action, "data": data}
    if context is not None:  # omitted when empty, as LangBot's serialiser leaves out nulls
        message["context"] = context
    return message


def success(seq_id: int, data: dict[str, Any], chunk_status: ChunkStatus = "continue") -> dict[str, Any]:
    # Every one-shot response carries "continue"; only a stream's terminator says "end".
    return {
        "seq_id": seq_id,
        "code": 0,
        "message": "success",
        "data": data,
        "chunk_status": chunk_status,
    }


def failure(seq_id: int, message: str) -> dict[str, Any]:
    return {"seq_id": seq_id, "code": 1, "message": message, "data": {}, "chunk_status": "continue"}


def error_message(exc: BaseException) -> str:
    """``"<ClassName>: text"``, cut to 4096 characters of text like LangBot 0.7."""
    text = str(exc)
    name = wire_name(exc)
    if isinstance(exc, BoxError):
        # A BoxError rebuilt from a wire message already starts with its class name.
        prefix = f"{name}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + ERROR_TRUNCATION_MARKER
    return f"{name}: {text}"
