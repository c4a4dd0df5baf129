"""A typed async client: one method per action the daemon serves.

Each method calls through the action's catalogue entry (``boxruntime.models.actions``): the
request and the reply are that entry's models, and every reply is validated before it is
returned. Daemon errors arrive as ``"<ErrorClass>: text"`` and leave here as that same class
(``boxruntime.errors``), so callers ``except BoxSessionNotFoundError`` as the daemon meant it.

The client talks through anything with ``call``/``call_stream`` — a ``Connector`` (which
reconnects) or a bare ``Peer``. A new action is its catalogue entry and one short method over
``_call``. The skill actions are in ``client_skills``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncGenerator
from typing import Any

from boxruntime.errors import ActionCallError
from boxruntime.models import (
    BackendInfo,
    BoxSpec,
    Empty,
    ExecInputRequest,
    ExecResizeRequest,
    ExecResult,
    ExecSignalRequest,
    ExecStarted,
    FsListRequest,
    FsListResult,
    FsReadRequest,
    FsReadResult,
    FsRemoveRequest,
    FsRemoveResult,
    FsRequest,
    FsStatResult,
    FsWriteRequest,
    FsWriteResult,
    InteractiveExecRequest,
    ManagedProcessInfo,
    OutputChunk,
    ProcessRef,
    RelayInfo,
    RuntimeStatus,
    SessionDetails,
    SessionIdRequest,
    SessionInfo,
    StartProcessRequest,
    StreamedResult,
)
from boxruntime.models import actions as a
from langbot_bridge.client_base import ActionCaller
from langbot_bridge.client_skills import FILE_CHUNK_BYTES, SkillCalls, file_chunks, upload_key

InteractiveItem = ExecStarted | OutputChunk | StreamedResult

# Re-exported: where callers have always found them.
__all__ = [
    "FILE_CHUNK_BYTES",
    "ActionCaller",
    "BoxClient",
    "InteractiveItem",
    "chunk_bytes",
    "file_chunks",
    "upload_key",
]


def chunk_bytes(chunk: OutputChunk) -> bytes:
    """The raw bytes of a streamed output chunk (text or base64 on the wire)."""
    return base64.b64decode(chunk.data) if chunk.encoding == "base64" else chunk.data.encode("utf-8")


def exec_timeout(spec: BoxSpec) -> float:
    """How long to wait for a command: its own limit plus time to start a sandbox for it."""
    return spec.timeout_sec + a.EXEC.timeout


class BoxClient(SkillCalls):
    """One typed async method per daemon action, over a ``Connector`` or a ``Peer``."""

    # ── runtime ─────────────────────────────────────────────────────────

    async def ping(self) -> None:
        """``__ping``: the daemon answers (raises otherwise)."""
        await self._call(a.PING, Empty())

    async def init(self, config: dict[str, Any]) -> None:
        """``box_init``: apply a LangBot ``box`` config section to the daemon."""
        await self._call(a.INIT, config)

    async def health(self) -> BackendInfo:
        """``box_health``: the selected backend and whether it is available."""
        answer = await self._call(a.HEALTH, Empty())
        if not isinstance(answer, BackendInfo):
            raise ActionCallError(f"{a.HEALTH.name} answered with admission mode's readiness object: {answer}")
        return answer

    async def backend_info(self) -> BackendInfo:
        """``box_get_backend_info``: the backend, and which limits it really enforces."""
        answer = await self._call(a.BACKEND_INFO, Empty())
        if isinstance(answer, BackendInfo):
            return answer
        return BackendInfo(name=answer.name, available=answer.available)  # admission mode: available = ready

    async def status(self) -> RuntimeStatus:
        """``box_status``: backend, session and process counts, TTL, capacity, warm pool."""
        return await self._call(a.STATUS, Empty())

    async def shutdown(self) -> None:
        """``box_shutdown``: the daemon drops its non-persistent sessions (and keeps running)."""
        await self._call(a.SHUTDOWN_SESSIONS, Empty())

    # ── exec ────────────────────────────────────────────────────────────

    async def exec(self, spec: BoxSpec) -> ExecResult:
        """``box_exec``: run ``spec.cmd`` in its session (created if needed); LangBot's result shape."""
        return await self._call(a.EXEC, spec, exec_timeout(spec))

    async def exec_stream(self, spec: BoxSpec) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        """``box_exec_stream``: output chunks as the command writes them, then its result.

        Close the iterator (``contextlib.aclosing``) when leaving it early.
        """
        # The timeout bounds each wait for the next message; a quiet command may stay silent
        # for its whole time limit.
        async for item in self._stream(a.EXEC_STREAM, spec, exec_timeout(spec)):
            yield item

    async def exec_interactive(self, request: InteractiveExecRequest) -> AsyncGenerator[InteractiveItem, None]:
        """``box_exec_interactive``: ``ExecStarted`` (its ``exec_id`` is for ``exec_input`` and
        ``exec_resize``), output chunks, then the result. Leaving the iterator early (close it
        with ``contextlib.aclosing``) cancels the command."""
        # A command without a time limit (an interactive shell) may be quiet for as long as it runs.
        wait = math.inf if request.no_timeout else exec_timeout(request)
        async for item in self._stream(a.EXEC_INTERACTIVE, request, wait):
            yield item

    async def exec_input(self, exec_id: str, data: bytes, *, eof: bool = False) -> None:
        """Send ``data`` to an interactive command's stdin (``eof``: then close it). Returns once
        the command has taken it; BoxValidationError once it takes no more input."""
        request = ExecInputRequest(exec_id=exec_id, data=base64.b64encode(data).decode("ascii"), eof=eof)
        await self._call(a.EXEC_INPUT, request)

    async def exec_signal(self, exec_id: str, signal: int = 9) -> None:
        """Signal an interactive command's process group (default SIGKILL); its stream then ends
        with its result."""
        await self._call(a.EXEC_SIGNAL, ExecSignalRequest(exec_id=exec_id, signal=signal))

    async def exec_resize(self, exec_id: str, rows: int, cols: int) -> None:
        """Set the size of an interactive command's terminal."""
        await self._call(a.EXEC_RESIZE, ExecResizeRequest(exec_id=exec_id, rows=rows, cols=cols))

    # ── sessions ────────────────────────────────────────────────────────

    async def create_session(self, spec: BoxSpec) -> SessionInfo:
        """Create the session, or return the existing compatible one."""
        return await self._call(a.CREATE_SESSION, spec)

    async def get_session(self, session_id: str) -> SessionDetails:
        """The session, with its managed processes when it has any."""
        return await self._call(a.GET_SESSION, SessionIdRequest(session_id=session_id))

    async def list_sessions(self) -> list[SessionInfo]:
        """``box_get_sessions``: every live session."""
        return (await self._call(a.GET_SESSIONS, Empty())).sessions

    async def delete_session(self, session_id: str) -> None:
        """``box_delete_session``: remove the session, its sandbox and its private files."""
        await self._call(a.DELETE_SESSION, SessionIdRequest(session_id=session_id))

    # ── managed processes ───────────────────────────────────────────────

    async def start_managed_process(self, request: StartProcessRequest) -> ManagedProcessInfo:
        """Start (or replace) a long-lived process in an existing session; its stdio is
        reached through the relay (``relay_info``)."""
        return await self._call(a.START_PROCESS, request)

    async def get_managed_process(self, session_id: str, process_id: str = "default") -> ManagedProcessInfo:
        """``box_get_managed_process``: the process now (running, or exited with its code)."""
        return await self._call(a.GET_PROCESS, ProcessRef(session_id=session_id, process_id=process_id))

    async def stop_managed_process(self, session_id: str, process_id: str = "default") -> None:
        """``box_stop_managed_process``: close stdin, SIGTERM, SIGKILL after 5 s."""
        await self._call(a.STOP_PROCESS, ProcessRef(session_id=session_id, process_id=process_id))

    async def relay_info(self) -> RelayInfo:
        """Where relay clients connect (None base URL: the control endpoint's own host)."""
        return await self._call(a.RELAY_INFO, Empty())

    # ── files (box_fs_*) ────────────────────────────────────────────────

    async def fs_read(self, request: FsReadRequest) -> FsReadResult:
        """``box_fs_read``: up to 8 MiB of a file from ``offset`` (base64 unless asked for UTF-8)."""
        return await self._call(a.FS_READ, request)

    async def fs_write(self, request: FsWriteRequest) -> FsWriteResult:
        """``box_fs_write``: write (or append, or write at ``offset``) up to 8 MiB of a file."""
        return await self._call(a.FS_WRITE, request)

    async def fs_list(self, request: FsListRequest) -> FsListResult:
        """``box_fs_list``: the entries of a directory, recursively if asked."""
        return await self._call(a.FS_LIST, request)

    async def fs_stat(self, request: FsRequest) -> FsStatResult:
        """``box_fs_stat``: what is at a path (``exists`` False when nothing is)."""
        return await self._call(a.FS_STAT, request)

    async def fs_remove(self, request: FsRemoveRequest) -> FsRemoveResult:
        """``box_fs_remove``: remove a file, or a directory (``recursive`` when not empty)."""
        return await self._call(a.FS_REMOVE, request)
