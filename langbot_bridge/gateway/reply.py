"""A turn's reply as outbox messages: the text (split at line breaks to fit the channel, never
cut), then one message per file; the last one is final. Files the channel cannot take are
named in a note instead of being dropped silently."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langbot_bridge.gateway.channel import Capabilities
from langbot_bridge.gateway.chatfiles import Collected
from langbot_bridge.gateway.messages import ChatRef, Outbound
from langbot_bridge.gateway.store import ReplyPart, out_file


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, broken after a newline (or a space)
    in the last third of a piece when there is one."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n"), window.rfind(" "))
        if cut < limit * 2 // 3:
            cut = limit - 1
        pieces.append(rest[: cut + 1].rstrip())
        rest = rest[cut + 1 :]
    if rest.strip() or not pieces:
        pieces.append(rest)
    return pieces


def compose(
    chat: ChatRef,
    reply_to: str,
    text: str,
    files: Sequence[Collected],
    capabilities: Capabilities,
    key: Callable[[int], str],
    first_sequence: int = 1,
) -> list[ReplyPart]:
    sendable = [f for f in files if f.data is not None and capabilities.files]
    notes = []
    for f in files:
        if f.data is None:
            notes.append(
                f"[{f.name} was not sent: {f.size} bytes, more than this channel's {capabilities.max_file_bytes}]"
            )
        elif not capabilities.files:
            notes.append(f"[{f.name} was not sent: this channel cannot send files]")
    body = "\n".join([text.strip(), *notes]).strip()
    texts = split_text(body, capabilities.max_text_chars) if body or not sendable else []
    parts: list[ReplyPart] = []
    total = len(texts) + len(sendable)
    for piece in texts:
        position = len(parts)
        outbound = Outbound(
            chat=chat,
            text=piece,
            reply_to=reply_to,
            sequence=first_sequence + position,
            final=position == total - 1,
            idempotency_key=key(position),
        )
        parts.append(ReplyPart(outbound))
    for f in sendable:
        assert f.data is not None
        position = len(parts)
        outbound = Outbound(
            chat=chat,
            file=out_file(f.name, f.mime_type, f.data),
            reply_to=reply_to,
            sequence=first_sequence + position,
            final=position == total - 1,
            idempotency_key=key(position),
        )
        parts.append(ReplyPart(outbound, f.data))
    return parts
