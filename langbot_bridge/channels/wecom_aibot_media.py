"""Files on the WeCom AI bot link: inbound images and files are downloaded (their URL is valid
5 minutes) and decrypted with the callback's ``aeskey``; outbound files are uploaded in
``aibot_upload_media_init`` -> ``_chunk`` ... -> ``_finish`` steps for a ``media_id``."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from langbot_bridge.channels import wecom_aibot_wire as wire
from langbot_bridge.channels.longconn import LinkDropped
from langbot_bridge.gateway.messages import InboundFile, OutFile

log = logging.getLogger(__name__)

Request = Callable[[str, str, dict[str, Any]], Awaitable[wire.Incoming | None]]


async def download_inbound(
    http: aiohttp.ClientSession, body: wire.MessageBody, timeout: float
) -> tuple[list[bytes], list[InboundFile], str]:
    """The message's image or file as (bytes, metadata) plus a note for what could not be had."""
    media = body.image if body.msgtype == "image" else body.file if body.msgtype == "file" else None
    if media is None:
        if body.msgtype in ("text", "voice", "mixed"):
            return [], [], ""
        return [], [], f"the user sent a {body.msgtype} message; it is not shown here"
    if not media.url or not media.aeskey:
        return [], [], f"the user sent a {body.msgtype} without a download link"
    try:
        async with http.get(media.url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            encrypted = await response.read()
        data = wire.decrypt_media(encrypted, media.aeskey)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("could not fetch a WeCom %s: %s", body.msgtype, exc)
        return [], [], f"the user sent a {body.msgtype} that could not be downloaded ({exc})"
    name = media.filename or (f"image-{body.msgid[:12]}.png" if body.msgtype == "image" else f"file-{body.msgid[:12]}")
    mime = "image/png" if body.msgtype == "image" else "application/octet-stream"
    return [data], [InboundFile(name=name, mime_type=mime, size=len(data))], ""


async def upload_file(request: Request, meta: OutFile, data: bytes) -> str:
    """Upload ``data`` in 512 KB chunks; the ``media_id`` to send. Raises ``LinkDropped`` (to be
    retried) when a step is refused or unanswered."""
    chunks = [data[i : i + wire.CHUNK_BYTES] for i in range(0, len(data), wire.CHUNK_BYTES)] or [b""]
    if len(chunks) > wire.MAX_CHUNKS:
        raise LinkDropped(f"{meta.name} needs {len(chunks)} chunks; WeCom takes at most {wire.MAX_CHUNKS}")
    kind = "image" if meta.mime_type.startswith("image/") else "file"
    init = {
        "type": kind,
        "filename": meta.name,
        "total_size": len(data),
        "total_chunks": len(chunks),
        "md5": hashlib.md5(data).hexdigest(),
    }
    answer = await _step(request, wire.UPLOAD_INIT, init)
    upload_id = str(answer.body.get("upload_id", ""))
    if not upload_id:
        raise LinkDropped("aibot_upload_media_init answered without upload_id")
    for index, chunk in enumerate(chunks):
        step = {"upload_id": upload_id, "chunk_index": index, "base64_data": base64.b64encode(chunk).decode("ascii")}
        await _step(request, wire.UPLOAD_CHUNK, step)
    finished = await _step(request, wire.UPLOAD_FINISH, {"upload_id": upload_id})
    media_id = str(finished.body.get("media_id", ""))
    if not media_id:
        raise LinkDropped("aibot_upload_media_finish answered without media_id")
    return media_id


async def _step(request: Request, cmd: str, body: dict[str, Any]) -> wire.Incoming:
    ack = await request(cmd, wire.req_id(cmd), body)
    if ack is None:
        raise LinkDropped(f"{cmd} got no answer")
    if ack.errcode != 0:
        raise LinkDropped(f"{cmd} refused: errcode {ack.errcode} {ack.errmsg}")
    return ack
