"""The managed-process stdio relay: ``/v1/sessions/{sid}/managed-process[/{pid}]/ws``.

Subprotocol ``mcp``. Each stdout line is one text message (lines up to 16 MiB; LangBot 0.5
broke on lines over 64 KiB, 0.7 sent raw chunks); each incoming text message is written to
stdin as one line. One client at a time: a new client takes over from an old one (which gets
close code 4000), so a client reconnecting after a network drop is never locked out by its
own stale socket. Detaching never kills the process; output produced meanwhile is replayed.
Errors before the upgrade are HTTP 400 JSON, like LangBot's.

LangBot 0.7 (reference §A.9, §D.5): a session of a workspace placement (its physical id) is
relayed only to a request that names the trusted instance, that workspace and its current
placement generation in its headers (else HTTP 401), and the relay closes when the generation
goes stale.
"""

from __future__ import annotations

import contextlib
import logging

import aiohttp
import anyio
from aiohttp import web

from boxruntime.errors import (
    BoxAdmissionError,
    BoxError,
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxReadinessError,
    BoxSessionNotFoundError,
    wire_name,
)
from boxruntime.protocol import MAX_MESSAGE_BYTES
from boxruntime.runtime.core import BoxRuntime
from boxruntime.runtime.processes import ClientReplaced, ManagedProcess, relay_lines
from boxruntime.tenancy.placement import Placement, is_physical_id
from boxruntime.tenancy.service import Tenancy
from boxruntime.tenancy.trust import Untrusted, admit_header, relay_placement

log = logging.getLogger(__name__)

RELAY_PATHS = (
    "/v1/sessions/{session_id}/managed-process/{process_id}/ws",
    "/v1/sessions/{session_id}/managed-process/ws",
)
CLOSE_REPLACED = 4000
CLOSE_STALE = 4001


def _error(exc: BoxError) -> web.Response:
    body = {"error": {"code": wire_name(exc), "message": str(exc)}}
    return web.json_response(body, status=400)


def find_running(runtime: BoxRuntime, session_id: str, process_id: str) -> ManagedProcess:
    process = runtime.processes.get(session_id, process_id)
    if not process.running:
        raise BoxManagedProcessConflictError(f"managed process {process_id} in session {session_id} is not running")
    return process


def relay_authority(request: web.Request, tenancy: Tenancy, session_id: str) -> Placement | None:
    """The placement a relay request acts for (None: a session outside every workspace, reached
    by LangBot 0.5's rules); HTTPUnauthorized when it may not reach ``session_id``."""
    try:
        instance = admit_header(request.headers, tenancy.trust, required=tenancy.required, pin=False)
        if instance is None and not is_physical_id(session_id):
            return None
        if instance is None:
            raise Untrusted("a workspace session needs the LangBot instance header")
        placement = relay_placement(request.headers, instance)
        if placement is None:
            raise Untrusted("missing or malformed workspace or placement generation header")
        if not tenancy.fence.is_current(placement):
            raise Untrusted("placement generation is not the current one")
        if not placement.owns(session_id):
            raise Untrusted("session is not in the placement's namespace")
        return placement
    except Untrusted as exc:
        log.warning("refused relay %s from %s: %s", request.path, request.remote, exc)
        raise web.HTTPUnauthorized(text="Unauthorized") from None


async def relay_ws(request: web.Request, tenancy: Tenancy, sockets: set[web.WebSocketResponse]) -> web.StreamResponse:
    runtime = tenancy.runtime
    session_id = request.match_info["session_id"]
    process_id = request.match_info.get("process_id", "default")
    placement = relay_authority(request, tenancy, session_id)
    try:
        if placement is not None and tenancy.managed.required:
            await tenancy.managed.admit_relay(placement)
        process = find_running(runtime, session_id, process_id)
    except (
        BoxSessionNotFoundError,
        BoxManagedProcessNotFoundError,
        BoxManagedProcessConflictError,
        BoxAdmissionError,
        BoxReadinessError,
    ) as exc:
        return _error(exc)
    # A frozen session thaws before its relay client is answered (and stays awake while one is
    # attached, unless suspend_with_relay).
    await runtime.sessions.used(session_id)
    ws = web.WebSocketResponse(protocols=("mcp",), max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30, compress=False)
    await ws.prepare(request)
    sockets.add(ws)  # closed with the daemon
    attachment = process.attach()
    runtime.metrics.relay_attaches.inc()
    log.info("relay attached to %s/%s from %s", session_id, process_id, request.remote)
    try:
        async with anyio.create_task_group() as tg:

            async def to_client() -> None:
                try:
                    async for line in relay_lines(attachment):
                        await ws.send_str(line)
                        runtime.metrics.relayed("out", len(line.encode("utf-8", "surrogateescape")) + 1)
                    await ws.close(code=aiohttp.WSCloseCode.OK, message=b"process exited")
                except ClientReplaced:
                    await ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer client")
                except ConnectionError:
                    pass
                tg.cancel_scope.cancel()

            async def to_process() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        if placement is not None and not tenancy.fence.is_current(placement):
                            break  # the generation went stale while this message was on its way
                        await runtime.sessions.used(session_id)
                        await process.write_line(msg.data)
                        runtime.metrics.relayed("in", len(msg.data.encode("utf-8", "surrogateescape")) + 1)
                # The client closed, and its close was answered in this same step: it must not
                # count as attached once it can ask (the full detach follows the cancellation).
                process.release(attachment)
                tg.cancel_scope.cancel()

            async def until_stale(fenced: Placement) -> None:
                await tenancy.fence.wait_stale(fenced)
                await ws.close(code=CLOSE_STALE, message=b"placement generation is stale")
                tg.cancel_scope.cancel()

            tg.start_soon(to_client)
            tg.start_soon(to_process)
            if placement is not None:
                tg.start_soon(until_stale, placement)
    except BoxManagedProcessConflictError:
        pass  # the process exited while a message was on its way in
    finally:
        sockets.discard(ws)
        process.detach(attachment)
        with contextlib.suppress(ConnectionError):
            await ws.close()
        log.info("relay detached from %s/%s", session_id, process_id)
    return ws
