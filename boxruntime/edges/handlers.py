"""The runtime's actions: each catalogue entry's handler, a typed runtime call.

Names and payloads are LangBot 0.5.0a2's (reference §B.1); ``box_exec_stream``, the files and
the interactive exec actions (``boxruntime.edges.interactive``) are ours. The table parses the
requests and dumps the answers (``boxruntime.action_table``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from boxruntime.action_table import ActionTable
from boxruntime.edges.interactive import InteractiveExecs
from boxruntime.models import (
    BackendInfo,
    BoxSpec,
    Empty,
    ExecResult,
    Initialized,
    ManagedProcessInfo,
    OutputChunk,
    ProcessRef,
    ProcessStopped,
    RelayInfo,
    RuntimeStatus,
    SessionDeleted,
    SessionDetails,
    SessionIdRequest,
    SessionInfo,
    SessionList,
    StartProcessRequest,
    StreamedResult,
)
from boxruntime.models import actions as a
from boxruntime.runtime.core import BoxRuntime
from boxruntime.skills.actions import SkillActions


class BoxActions:
    """The actions a daemon serves on every control connection."""

    def __init__(self, runtime: BoxRuntime, skills: SkillActions, relay: RelayInfo | None = None) -> None:
        self.runtime = runtime
        self.skills = skills
        self.relay = relay or RelayInfo(base_url=None)

    def table(self) -> ActionTable:
        """The action table of one connection (its interactive execs are its own)."""
        table = ActionTable()
        table.update(self.skills.table())
        table.update(InteractiveExecs(self.runtime).table())
        files = self.runtime.files
        table.unary(a.PING, self.ping)
        table.unary(a.INIT, self.init)
        table.unary(a.HEALTH, self.health)
        table.unary(a.BACKEND_INFO, self.health)
        table.unary(a.STATUS, self.status)
        table.unary(a.SHUTDOWN_SESSIONS, self.shutdown)
        table.unary(a.RELAY_INFO, self.relay_info)
        table.unary(a.EXEC, self.exec)
        table.streamed(a.EXEC_STREAM, self.exec_stream)
        table.unary(a.CREATE_SESSION, self.create_session)
        table.unary(a.GET_SESSION, self.get_session)
        table.unary(a.GET_SESSIONS, self.get_sessions)
        table.unary(a.DELETE_SESSION, self.delete_session)
        table.unary(a.START_PROCESS, self.start_process)
        table.unary(a.GET_PROCESS, self.get_process)
        table.unary(a.STOP_PROCESS, self.stop_process)
        table.unary(a.FS_READ, files.read)
        table.unary(a.FS_WRITE, files.write)
        table.unary(a.FS_LIST, files.list)
        table.unary(a.FS_STAT, files.stat)
        table.unary(a.FS_REMOVE, files.remove)
        return table

    async def ping(self, _: Empty) -> Empty:
        return Empty()

    async def init(self, config: dict[str, Any]) -> Initialized:
        await self.runtime.init(config)
        return Initialized()

    async def health(self, _: Empty) -> BackendInfo:
        return await self.runtime.backend_info()

    async def status(self, _: Empty) -> RuntimeStatus:
        return await self.runtime.status()

    async def exec(self, spec: BoxSpec) -> ExecResult:
        return await self.runtime.exec(spec)

    async def exec_stream(self, spec: BoxSpec) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        # Closed with this stream: a client that stops reading ends the command at once.
        async with contextlib.aclosing(self.runtime.exec_stream(spec)) as items:
            async for item in items:
                yield item

    async def create_session(self, spec: BoxSpec) -> SessionInfo:
        return await self.runtime.create_session(spec)

    async def get_session(self, ref: SessionIdRequest) -> SessionDetails:
        return self.runtime.get_session(ref.session_id)

    async def get_sessions(self, _: Empty) -> SessionList:
        return SessionList(sessions=self.runtime.list_sessions())

    async def delete_session(self, ref: SessionIdRequest) -> SessionDeleted:
        await self.runtime.delete_session(ref.session_id)
        return SessionDeleted(deleted=ref.session_id)

    async def shutdown(self, _: Empty) -> Empty:
        await self.runtime.shutdown_sessions()
        return Empty()

    async def start_process(self, req: StartProcessRequest) -> ManagedProcessInfo:
        return await self.runtime.processes.start(req.session_id, req.spec)

    async def get_process(self, ref: ProcessRef) -> ManagedProcessInfo:
        return self.runtime.processes.get(ref.session_id, ref.process_id).info()

    async def stop_process(self, ref: ProcessRef) -> ProcessStopped:
        await self.runtime.processes.stop(ref.session_id, ref.process_id)
        return ProcessStopped(stopped=ref.process_id)

    async def relay_info(self, _: Empty) -> RelayInfo:
        return self.relay
