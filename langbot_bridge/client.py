"""A typed async client: one method per action the daemon serves.

Requests and replies are the models of ``boxruntime.models``; every reply is validated before
it is returned. Daemon errors arrive as ``"<ErrorClass>: text"`` and leave here as that same
class (``boxruntime.errors``), so callers ``except BoxSessionNotFoundError`` as the daemon
meant it.

The client talks through anything with ``call``/``call_stream`` — a ``Connector`` (which
reconnects) or a bare ``Peer``. A new action is one short method over ``_call``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Protocol, TypeVar

import pydantic

from boxruntime.errors import ActionCallError
from boxruntime.models import (
    BackendInfo,
    BoxSpec,
    ExecResult,
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
from boxruntime.protocol import DEFAULT_TIMEOUT, Payload

M = TypeVar("M", bound=pydantic.BaseModel)

# Client-side waits (reference §B.1 / §E.7), longer where our daemon may do more.
SESSION_START_TIMEOUT = 120.0  # creating a sandbox: image resolution, container, agent start
DELETE_TIMEOUT = 60.0
PROCESS_TIMEOUT = 60.0  # starting or stopping (SIGTERM, grace, SIGKILL) a managed process
SHUTDOWN_TIMEOUT = 120.0
FS_TIMEOUT = 60.0  # up to 8 MiB each way


class ActionCaller(Protocol):
    """What the client needs from a link: ``Connector`` and ``Peer`` both fit."""

    async def call(self, action: str, data: Payload, timeout: float = ...) -> Payload: ...

    def call_stream(self, action: str, data: Payload, timeout: float = ...) -> AsyncIterator[Payload]: ...


StreamItem = Annotated[OutputChunk | StreamedResult, pydantic.Field(discriminator="kind")]
_STREAM_ITEM: pydantic.TypeAdapter[OutputChunk | StreamedResult] = pydantic.TypeAdapter(StreamItem)


class _SessionsReply(pydantic.BaseModel):
    sessions: list[SessionInfo]


def chunk_bytes(chunk: OutputChunk) -> bytes:
    """The raw bytes of a streamed output chunk (text or base64 on the wire)."""
    return base64.b64decode(chunk.data) if chunk.encoding == "base64" else chunk.data.encode("utf-8")


def _validated(model: type[M], action: str, data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ActionCallError(f"unexpected reply to {action}: {exc}") from None


def _dump(request: pydantic.BaseModel) -> Payload:
    return request.model_dump(mode="json")


def exec_timeout(spec: BoxSpec) -> float:
    """How long to wait for a command: its own limit plus time to start a sandbox for it."""
    return spec.timeout_sec + SESSION_START_TIMEOUT


class BoxClient:
    def __init__(self, caller: ActionCaller) -> None:
        self.caller = caller

    async def _call(
        self, action: str, request: pydantic.BaseModel | None, reply: type[M], timeout: float = DEFAULT_TIMEOUT
    ) -> M:
        data = _dump(request) if request is not None else {}
        return _validated(reply, action, await self.caller.call(action, data, timeout))

    # ── runtime ─────────────────────────────────────────────────────────

    async def ping(self) -> None:
        await self.caller.call("__ping", {})

    async def init(self, config: dict[str, Any]) -> None:
        """``box_init``: apply a LangBot ``box`` config section to the daemon."""
        await self.caller.call("box_init", config)

    async def health(self) -> BackendInfo:
        return await self._call("box_health", None, BackendInfo)

    async def backend_info(self) -> BackendInfo:
        return await self._call("box_get_backend_info", None, BackendInfo)

    async def status(self) -> RuntimeStatus:
        return await self._call("box_status", None, RuntimeStatus)

    async def shutdown(self) -> None:
        """``box_shutdown``: the daemon drops its non-persistent sessions (and keeps running)."""
        await self.caller.call("box_shutdown", {}, SHUTDOWN_TIMEOUT)

    # ── exec ────────────────────────────────────────────────────────────

    async def exec(self, spec: BoxSpec) -> ExecResult:
        return await self._call("box_exec", spec, ExecResult, exec_timeout(spec))

    async def exec_stream(self, spec: BoxSpec) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        """``box_exec_stream``: output chunks as the command writes them, then its result.

        Close the iterator (``contextlib.aclosing``) when leaving it early.
        """
        # The timeout bounds each wait for the next message; a quiet command may stay silent
        # for its whole time limit.
        stream = self.caller.call_stream("box_exec_stream", _dump(spec), exec_timeout(spec))
        try:
            async for item in stream:
                try:
                    yield _STREAM_ITEM.validate_python(item)
                except pydantic.ValidationError as exc:
                    raise ActionCallError(f"unexpected item in box_exec_stream: {exc}") from None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    # ── sessions ────────────────────────────────────────────────────────

    async def create_session(self, spec: BoxSpec) -> SessionInfo:
        """Create the session, or return the existing compatible one."""
        return await self._call("box_create_session", spec, SessionInfo, SESSION_START_TIMEOUT)

    async def get_session(self, session_id: str) -> SessionDetails:
        """The session, with its managed processes when it has any."""
        return await self._call("box_get_session", SessionIdRequest(session_id=session_id), SessionDetails)

    async def list_sessions(self) -> list[SessionInfo]:
        return (await self._call("box_get_sessions", None, _SessionsReply)).sessions

    async def delete_session(self, session_id: str) -> None:
        await self.caller.call("box_delete_session", _dump(SessionIdRequest(session_id=session_id)), DELETE_TIMEOUT)

    # ── managed processes ───────────────────────────────────────────────

    async def start_managed_process(self, request: StartProcessRequest) -> ManagedProcessInfo:
        """Start (or replace) a long-lived process in an existing session; its stdio is
        reached through the relay (``relay_info``)."""
        return await self._call("box_start_managed_process", request, ManagedProcessInfo, PROCESS_TIMEOUT)

    async def get_managed_process(self, session_id: str, process_id: str = "default") -> ManagedProcessInfo:
        ref = ProcessRef(session_id=session_id, process_id=process_id)
        return await self._call("box_get_managed_process", ref, ManagedProcessInfo)

    async def stop_managed_process(self, session_id: str, process_id: str = "default") -> None:
        ref = ProcessRef(session_id=session_id, process_id=process_id)
        await self.caller.call("box_stop_managed_process", _dump(ref), PROCESS_TIMEOUT)

    async def relay_info(self) -> RelayInfo:
        """Where relay clients connect (None base URL: the control endpoint's own host)."""
        return await self._call("box_relay_info", None, RelayInfo)

    # ── files (box_fs_*) ────────────────────────────────────────────────

    async def fs_read(self, request: FsReadRequest) -> FsReadResult:
        return await self._call("box_fs_read", request, FsReadResult, FS_TIMEOUT)

    async def fs_write(self, request: FsWriteRequest) -> FsWriteResult:
        return await self._call("box_fs_write", request, FsWriteResult, FS_TIMEOUT)

    async def fs_list(self, request: FsListRequest) -> FsListResult:
        return await self._call("box_fs_list", request, FsListResult, FS_TIMEOUT)

    async def fs_stat(self, request: FsRequest) -> FsStatResult:
        return await self._call("box_fs_stat", request, FsStatResult, FS_TIMEOUT)

    async def fs_remove(self, request: FsRemoveRequest) -> FsRemoveResult:
        return await self._call("box_fs_remove", request, FsRemoveResult, FS_TIMEOUT)
