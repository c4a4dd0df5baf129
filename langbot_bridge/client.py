"""A typed async client: one method per action the daemon serves.

Requests and replies are the models of ``boxruntime.models``; every reply is validated before
it is returned. Daemon errors arrive as ``"<ErrorClass>: text"`` and leave here as that same
class (``boxruntime.errors``), so callers ``except BoxSessionNotFoundError`` as the daemon
meant it.

The client talks through anything with ``call``/``call_stream`` — a ``Connector`` (which
reconnects) or a bare ``Peer``. A new action is one short method over ``_call``.

Skill zips travel as LangBot's client sends them (reference §A.7): ``__file_chunk`` calls of
16 KiB raw bytes each, base64-encoded, under a key ``<sha256[:16]>-<uuid hex>.zip``; then the
action that consumes the upload names that key.
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from typing import Annotated, Any, Protocol, TypeVar

import pydantic

from boxruntime.errors import ActionCallError
from boxruntime.models import (
    BackendInfo,
    BoxSpec,
    ChunkReceipt,
    CreateSkillRequest,
    ExecInputRequest,
    ExecResizeRequest,
    ExecResult,
    ExecSignalRequest,
    ExecStarted,
    FileChunk,
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
    InstallSkillZipRequest,
    InteractiveExecRequest,
    ListSkillFilesRequest,
    ManagedProcessInfo,
    OutputChunk,
    PreviewSkillZipRequest,
    ProcessRef,
    ReadSkillFileRequest,
    RelayInfo,
    RuntimeStatus,
    ScanSkillRequest,
    SessionDetails,
    SessionIdRequest,
    SessionInfo,
    Skill,
    SkillDeleted,
    SkillFields,
    SkillFileContent,
    SkillFileListing,
    SkillFileWritten,
    SkillList,
    SkillNameRequest,
    SkillPreview,
    SkillPreviewList,
    SkillResult,
    SkillUpdate,
    StartProcessRequest,
    StreamedResult,
    UpdateSkillRequest,
    WriteSkillFileRequest,
)
from boxruntime.protocol import DEFAULT_TIMEOUT, Payload

M = TypeVar("M", bound=pydantic.BaseModel)
S = TypeVar("S")

# Client-side waits (reference §B.1 / §E.7), longer where our daemon may do more.
SESSION_START_TIMEOUT = 120.0  # creating a sandbox: image resolution, container, agent start
DELETE_TIMEOUT = 60.0
PROCESS_TIMEOUT = 60.0  # starting or stopping (SIGTERM, grace, SIGKILL) a managed process
SHUTDOWN_TIMEOUT = 120.0
FS_TIMEOUT = 60.0  # up to 8 MiB each way
SKILL_TIMEOUT = 60.0  # a store change copies and hashes a package
PREVIEW_TIMEOUT = 60.0  # LangBot's, for box_preview_skill_zip
INSTALL_TIMEOUT = 120.0  # LangBot's, for box_install_skill_zip

FILE_CHUNK_BYTES = 16 * 1024  # raw bytes per __file_chunk, before base64 (reference §A.7)
# Input is answered once the command has read it: as long as the command takes, bounded by its
# own end (which fails the call).
INPUT_TIMEOUT = 24 * 3600.0


class ActionCaller(Protocol):
    """What the client needs from a link: ``Connector`` and ``Peer`` both fit."""

    async def call(self, action: str, data: Payload, timeout: float = ...) -> Payload:
        """Call ``action`` with ``data``; its reply, or the daemon's error as its typed class."""

    def call_stream(self, action: str, data: Payload, timeout: float = ...) -> AsyncIterator[Payload]:
        """Call a streamed ``action``; each chunk of its reply as it arrives."""


StreamItem = Annotated[OutputChunk | StreamedResult, pydantic.Field(discriminator="kind")]
_STREAM_ITEM: pydantic.TypeAdapter[OutputChunk | StreamedResult] = pydantic.TypeAdapter(StreamItem)
InteractiveItem = ExecStarted | OutputChunk | StreamedResult
_INTERACTIVE_ITEM: pydantic.TypeAdapter[InteractiveItem] = pydantic.TypeAdapter(
    Annotated[InteractiveItem, pydantic.Field(discriminator="kind")]
)


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


def upload_key(data: bytes, extension: str = "zip") -> str:
    """LangBot's upload key: ``<sha256[:16]>-<uuid hex>[.<extension>]``, new for every upload."""
    suffix = f".{extension.strip('.')}" if extension.strip(".") else ""
    return f"{hashlib.sha256(data).hexdigest()[:16]}-{uuid.uuid4().hex}{suffix}"


def file_chunks(data: bytes, file_key: str) -> Iterator[FileChunk]:
    """``data`` as ``__file_chunk`` payloads, in order; an empty file is one empty chunk."""
    amount = max(1, -(-len(data) // FILE_CHUNK_BYTES))
    for index in range(amount):
        piece = data[index * FILE_CHUNK_BYTES : (index + 1) * FILE_CHUNK_BYTES]
        yield FileChunk(
            file_key=file_key,
            file_length=len(data),
            chunk_base64=base64.b64encode(piece).decode("ascii"),
            chunk_index=index,
            chunk_amount=amount,
            chunk_size=len(piece),
        )


def exec_timeout(spec: BoxSpec) -> float:
    """How long to wait for a command: its own limit plus time to start a sandbox for it."""
    return spec.timeout_sec + SESSION_START_TIMEOUT


class BoxClient:
    """One typed async method per daemon action, over a ``Connector`` or a ``Peer``."""

    def __init__(self, caller: ActionCaller) -> None:
        self.caller = caller

    async def _call(
        self, action: str, request: pydantic.BaseModel | None, reply: type[M], timeout: float = DEFAULT_TIMEOUT
    ) -> M:
        data = _dump(request) if request is not None else {}
        return _validated(reply, action, await self.caller.call(action, data, timeout))

    # ── runtime ─────────────────────────────────────────────────────────

    async def ping(self) -> None:
        """``__ping``: the daemon answers (raises otherwise)."""
        await self.caller.call("__ping", {})

    async def init(self, config: dict[str, Any]) -> None:
        """``box_init``: apply a LangBot ``box`` config section to the daemon."""
        await self.caller.call("box_init", config)

    async def health(self) -> BackendInfo:
        """``box_health``: the selected backend and whether it is available."""
        return await self._call("box_health", None, BackendInfo)

    async def backend_info(self) -> BackendInfo:
        """``box_get_backend_info``: the backend, and which limits it really enforces."""
        return await self._call("box_get_backend_info", None, BackendInfo)

    async def status(self) -> RuntimeStatus:
        """``box_status``: backend, session and process counts, TTL, capacity, warm pool."""
        return await self._call("box_status", None, RuntimeStatus)

    async def shutdown(self) -> None:
        """``box_shutdown``: the daemon drops its non-persistent sessions (and keeps running)."""
        await self.caller.call("box_shutdown", {}, SHUTDOWN_TIMEOUT)

    # ── exec ────────────────────────────────────────────────────────────

    async def exec(self, spec: BoxSpec) -> ExecResult:
        """``box_exec``: run ``spec.cmd`` in its session (created if needed); LangBot's result shape."""
        return await self._call("box_exec", spec, ExecResult, exec_timeout(spec))

    async def exec_stream(self, spec: BoxSpec) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        """``box_exec_stream``: output chunks as the command writes them, then its result.

        Close the iterator (``contextlib.aclosing``) when leaving it early.
        """
        # The timeout bounds each wait for the next message; a quiet command may stay silent
        # for its whole time limit.
        async for item in self._stream("box_exec_stream", spec, exec_timeout(spec), _STREAM_ITEM):
            yield item

    async def exec_interactive(self, request: InteractiveExecRequest) -> AsyncGenerator[InteractiveItem, None]:
        """``box_exec_interactive``: ``ExecStarted`` (its ``exec_id`` is for ``exec_input`` and
        ``exec_resize``), output chunks, then the result. Leaving the iterator early (close it
        with ``contextlib.aclosing``) cancels the command."""
        # A command without a time limit (an interactive shell) may be quiet for as long as it runs.
        wait = math.inf if request.no_timeout else exec_timeout(request)
        async for item in self._stream("box_exec_interactive", request, wait, _INTERACTIVE_ITEM):
            yield item

    async def exec_input(self, exec_id: str, data: bytes, *, eof: bool = False) -> None:
        """Send ``data`` to an interactive command's stdin (``eof``: then close it). Returns once
        the command has taken it; BoxValidationError once it takes no more input."""
        request = ExecInputRequest(exec_id=exec_id, data=base64.b64encode(data).decode("ascii"), eof=eof)
        await self.caller.call("box_exec_input", _dump(request), INPUT_TIMEOUT)

    async def exec_signal(self, exec_id: str, signal: int = 9) -> None:
        """Signal an interactive command's process group (default SIGKILL); its stream then ends
        with its result."""
        await self.caller.call("box_exec_signal", _dump(ExecSignalRequest(exec_id=exec_id, signal=signal)))

    async def exec_resize(self, exec_id: str, rows: int, cols: int) -> None:
        """Set the size of an interactive command's terminal."""
        await self.caller.call("box_exec_resize", _dump(ExecResizeRequest(exec_id=exec_id, rows=rows, cols=cols)))

    async def _stream(
        self, action: str, request: pydantic.BaseModel, timeout: float, items: pydantic.TypeAdapter[S]
    ) -> AsyncGenerator[S, None]:
        stream = self.caller.call_stream(action, _dump(request), timeout)
        try:
            async for item in stream:
                try:
                    yield items.validate_python(item)
                except pydantic.ValidationError as exc:
                    raise ActionCallError(f"unexpected item in {action}: {exc}") from None
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
        """``box_get_sessions``: every live session."""
        return (await self._call("box_get_sessions", None, _SessionsReply)).sessions

    async def delete_session(self, session_id: str) -> None:
        """``box_delete_session``: remove the session, its sandbox and its private files."""
        await self.caller.call("box_delete_session", _dump(SessionIdRequest(session_id=session_id)), DELETE_TIMEOUT)

    # ── managed processes ───────────────────────────────────────────────

    async def start_managed_process(self, request: StartProcessRequest) -> ManagedProcessInfo:
        """Start (or replace) a long-lived process in an existing session; its stdio is
        reached through the relay (``relay_info``)."""
        return await self._call("box_start_managed_process", request, ManagedProcessInfo, PROCESS_TIMEOUT)

    async def get_managed_process(self, session_id: str, process_id: str = "default") -> ManagedProcessInfo:
        """``box_get_managed_process``: the process now (running, or exited with its code)."""
        ref = ProcessRef(session_id=session_id, process_id=process_id)
        return await self._call("box_get_managed_process", ref, ManagedProcessInfo)

    async def stop_managed_process(self, session_id: str, process_id: str = "default") -> None:
        """``box_stop_managed_process``: close stdin, SIGTERM, SIGKILL after 5 s."""
        ref = ProcessRef(session_id=session_id, process_id=process_id)
        await self.caller.call("box_stop_managed_process", _dump(ref), PROCESS_TIMEOUT)

    async def relay_info(self) -> RelayInfo:
        """Where relay clients connect (None base URL: the control endpoint's own host)."""
        return await self._call("box_relay_info", None, RelayInfo)

    # ── files (box_fs_*) ────────────────────────────────────────────────

    async def fs_read(self, request: FsReadRequest) -> FsReadResult:
        """``box_fs_read``: up to 8 MiB of a file from ``offset`` (base64 unless asked for UTF-8)."""
        return await self._call("box_fs_read", request, FsReadResult, FS_TIMEOUT)

    async def fs_write(self, request: FsWriteRequest) -> FsWriteResult:
        """``box_fs_write``: write (or append, or write at ``offset``) up to 8 MiB of a file."""
        return await self._call("box_fs_write", request, FsWriteResult, FS_TIMEOUT)

    async def fs_list(self, request: FsListRequest) -> FsListResult:
        """``box_fs_list``: the entries of a directory, recursively if asked."""
        return await self._call("box_fs_list", request, FsListResult, FS_TIMEOUT)

    async def fs_stat(self, request: FsRequest) -> FsStatResult:
        """``box_fs_stat``: what is at a path (``exists`` False when nothing is)."""
        return await self._call("box_fs_stat", request, FsStatResult, FS_TIMEOUT)

    async def fs_remove(self, request: FsRemoveRequest) -> FsRemoveResult:
        """``box_fs_remove``: remove a file, or a directory (``recursive`` when not empty)."""
        return await self._call("box_fs_remove", request, FsRemoveResult, FS_TIMEOUT)

    # ── skills (LangBot 0.5's 11 actions, reference §B.1, §D.14) ───────

    async def list_skills(self) -> list[Skill]:
        """``box_list_skills``: every installed skill."""
        return (await self._call("box_list_skills", None, SkillList, SKILL_TIMEOUT)).skills

    async def get_skill(self, name: str) -> Skill | None:
        """The skill called ``name``, or None when there is none."""
        return (await self._call("box_get_skill", SkillNameRequest(name=name), SkillResult, SKILL_TIMEOUT)).skill

    async def create_skill(self, fields: SkillFields) -> Skill:
        """A new skill: empty, or the package at ``fields.package_root`` (adopted when it is in
        the store, copied in when it is elsewhere on the daemon's host)."""
        reply = await self._call("box_create_skill", CreateSkillRequest(skill=fields), SkillResult, SKILL_TIMEOUT)
        return _present(reply, "box_create_skill")

    async def update_skill(self, name: str, fields: SkillUpdate) -> Skill:
        """Rewrite the skill's SKILL.md with the fields that were set (renaming is refused)."""
        request = UpdateSkillRequest(name=name, skill=fields)
        # Only the fields the caller set: the daemon tells "left out" from "set to null".
        data = request.model_dump(mode="json", exclude_unset=True)
        reply = await self.caller.call("box_update_skill", data, SKILL_TIMEOUT)
        return _present(_validated(SkillResult, "box_update_skill", reply), "box_update_skill")

    async def delete_skill(self, name: str) -> None:
        """``box_delete_skill``: remove the skill's package from the store."""
        await self._call("box_delete_skill", SkillNameRequest(name=name), SkillDeleted, SKILL_TIMEOUT)

    async def scan_skill_directory(self, path: str) -> Skill:
        """The one skill in a directory on the daemon's host (or at most two levels below it)."""
        return await self._call("box_scan_skill_directory", ScanSkillRequest(path=path), Skill, SKILL_TIMEOUT)

    async def list_skill_files(
        self, name: str, path: str = ".", *, include_hidden: bool = False, max_entries: int = 200
    ) -> SkillFileListing:
        """One directory of the package (not recursive); ``truncated`` once ``max_entries`` is reached."""
        request = ListSkillFilesRequest(name=name, path=path, include_hidden=include_hidden, max_entries=max_entries)
        return await self._call("box_list_skill_files", request, SkillFileListing, SKILL_TIMEOUT)

    async def read_skill_file(self, name: str, path: str) -> SkillFileContent:
        """``box_read_skill_file``: one file of the package (text, up to 1 MiB)."""
        request = ReadSkillFileRequest(name=name, path=path)
        return await self._call("box_read_skill_file", request, SkillFileContent, SKILL_TIMEOUT)

    async def write_skill_file(self, name: str, path: str, content: str) -> SkillFileWritten:
        """Write a UTF-8 file in the package, creating parent directories."""
        request = WriteSkillFileRequest(name=name, path=path, content=content)
        return await self._call("box_write_skill_file", request, SkillFileWritten, SKILL_TIMEOUT)

    async def upload_file(self, data: bytes, extension: str = "zip") -> str:
        """Send ``data`` with ``__file_chunk``; returns the key an action then consumes (once)."""
        key = upload_key(data, extension)
        receipt: ChunkReceipt | None = None
        for chunk in file_chunks(data, key):
            receipt = await self._call("__file_chunk", chunk, ChunkReceipt)
        if receipt is None or not receipt.complete or receipt.received_bytes != len(data):
            raise ActionCallError(f"the daemon did not confirm the whole upload of {len(data)} bytes: {receipt}")
        return key

    async def preview_skill_zip(
        self, data: bytes, filename: str = "skill.zip", *, source_subdir: str = "", target_suffix: str = "upload"
    ) -> list[SkillPreview]:
        """The skills a zip holds and where each would be installed; installs nothing."""
        key = await self.upload_file(data)
        request = PreviewSkillZipRequest(
            file_key=key, filename=filename, source_subdir=source_subdir, target_suffix=target_suffix
        )
        return (await self._call("box_preview_skill_zip", request, SkillPreviewList, PREVIEW_TIMEOUT)).skills

    async def install_skill_zip(
        self,
        data: bytes,
        filename: str,
        *,
        source_paths: Sequence[str] = (),
        source_subdir: str = "",
        target_suffix: str = "upload",
    ) -> list[Skill]:
        """Install the zip's skill, or those ``source_paths`` name when it holds several, at
        ``<skills>/<filename stem>[-<leaf>][-<target_suffix>]``; all or nothing."""
        key = await self.upload_file(data)
        request = InstallSkillZipRequest(
            file_key=key,
            filename=filename,
            source_paths=list(source_paths),
            source_subdir=source_subdir,
            target_suffix=target_suffix,
        )
        return (await self._call("box_install_skill_zip", request, SkillList, INSTALL_TIMEOUT)).skills


def _present(reply: SkillResult, action: str) -> Skill:
    if reply.skill is None:
        raise ActionCallError(f"unexpected reply to {action}: no skill")
    return reply.skill
