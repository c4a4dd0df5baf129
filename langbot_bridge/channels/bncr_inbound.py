"""A ``bncr.inbound`` request as the gateway's ``Inbound``: the route from ``platform``,
``groupId``, ``userId`` (or any target form in ``sessionKey``/``scope``), the task from a
``#task:`` prefix or a ``:task:`` suffix, the media inline (``base64``) or by the ``path`` of a
finished upload. Pure: nothing is stored here."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

from langbot_bridge.channels import bncr_protocol as wire
from langbot_bridge.channels.bncr_files import Uploads
from langbot_bridge.gateway.channel import Rejected
from langbot_bridge.gateway.messages import ChatRef, Inbound, InboundFile


@dataclass(frozen=True, slots=True)
class Parsed:
    inbound: Inbound
    files: list[bytes]
    route: wire.Route
    session_key: str  # with its :task: suffix
    task: str | None
    msg_id: str | None


def parse_inbound(params: dict[str, Any], channel: str, account: str, uploads: Uploads, max_file_bytes: int) -> Parsed:
    """``bncr.inbound`` params as an ``Inbound`` with its files; raises ``Rejected`` (400/413)
    for a request without a route, bad base64, an oversized file or an unknown upload path."""
    p = wire.InboundParams.model_validate(params)
    named = wire.parse_target(p.sessionKey or p.scope) if (p.sessionKey or p.scope) else None
    platform = p.platform.strip() or (named[0].platform if named else "")
    group_id = p.groupId.strip() or "0"
    user_id = p.userId.strip() or (named[0].user_id if named else "")
    if not platform or not (user_id or group_id != "0"):
        raise Rejected("malformed", 400, "platform/groupId/userId required")
    route = wire.Route(platform, group_id, user_id or "0")
    task, text = wire.extract_task(p.msg or p.text)
    task = task or (named[1] if named else None)
    files, metas = _files(p, uploads, max_file_bytes)
    chat = ChatRef(
        channel=channel,
        account=account,
        chat_type="group" if route.is_group else "person",
        chat_id=route.scope,
        user_id=route.user_id,
        title=route.scope,
        thread=task or "",
        route={"platform": route.platform, "groupId": route.group_id, "userId": route.user_id},
    )
    inbound = Inbound(
        chat=chat,
        # Without a msgId there is nothing to recognise a repeat by: every copy is new.
        message_id=p.msgId or f"auto:{uuid.uuid4().hex}",
        text=text,
        kind=p.type or "text",
        note="" if text or metas or p.type == "text" else f"the user sent a {p.type} message",
        files=metas,
        received_at=time.time(),
    )
    session_key = route.session_key + (f":task:{task}" if task else "")
    return Parsed(inbound, files, route, session_key, task, p.msgId or None)


def _files(p: wire.InboundParams, uploads: Uploads, max_bytes: int) -> tuple[list[bytes], list[InboundFile]]:
    inline = p.base64 or p.mediaBase64
    if inline:
        payload = inline.split(",", 1)[-1] if inline.startswith("data:") else inline
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("malformed", 400, "base64 is not valid") from None
        if len(data) > max_bytes:
            raise Rejected("too_large", 413, f"file exceeds {max_bytes} bytes")
        name = p.fileName or f"{p.type or 'file'}.bin"
        return [data], [InboundFile(name=name, mime_type=p.mimeType or "application/octet-stream", size=len(data))]
    if p.path:
        finished = uploads.take(p.path)
        if finished is None:
            raise Rejected("malformed", 400, f"no finished upload at path {p.path!r} (expired or unknown)")
        return [finished.data], [finished.meta]
    return [], []
