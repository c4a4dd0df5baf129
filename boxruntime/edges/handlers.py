"""Action name -> runtime call: validation in, models out.

Names and payloads are LangBot 0.5.0a2's (reference §B.1); ``box_exec_stream`` and the
interactive exec actions (``boxruntime.edges.interactive``) are ours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from boxruntime.edges.interactive import InteractiveExecs
from boxruntime.models import (
    BoxSpec,
    FsListRequest,
    FsReadRequest,
    FsRemoveRequest,
    FsRequest,
    FsWriteRequest,
    ProcessRef,
    RelayInfo,
    SessionIdRequest,
    StartProcessRequest,
)
from boxruntime.payloads import dump, parse
from boxruntime.protocol import ActionHandler, Payload
from boxruntime.runtime.core import BoxRuntime
from boxruntime.skills.actions import SkillActions


class BoxActions:
    """The actions a daemon serves on every control connection."""

    def __init__(self, runtime: BoxRuntime, skills: SkillActions, relay: RelayInfo | None = None) -> None:
        self.runtime = runtime
        self.skills = skills
        self.relay = relay or RelayInfo(base_url=None)

    def table(self) -> dict[str, ActionHandler]:
        """The action table of one connection (its interactive execs are its own)."""
        return {
            **self.skills.table(),
            **InteractiveExecs(self.runtime).table(),
            "box_init": self.init,
            "box_health": self.health,
            "box_status": self.status,
            "box_get_backend_info": self.health,
            "box_exec": self.exec,
            "box_exec_stream": self.exec_stream,
            "box_create_session": self.create_session,
            "box_get_session": self.get_session,
            "box_get_sessions": self.get_sessions,
            "box_delete_session": self.delete_session,
            "box_shutdown": self.shutdown,
            "box_start_managed_process": self.start_process,
            "box_get_managed_process": self.get_process,
            "box_stop_managed_process": self.stop_process,
            "box_relay_info": self.relay_info,
            "box_fs_read": self.fs_read,
            "box_fs_write": self.fs_write,
            "box_fs_list": self.fs_list,
            "box_fs_stat": self.fs_stat,
            "box_fs_remove": self.fs_remove,
        }

    async def init(self, data: Payload) -> Payload:
        await self.runtime.init(data)
        return {"initialized": True}

    async def health(self, _: Payload) -> Payload:
        return dump(await self.runtime.backend_info())

    async def status(self, _: Payload) -> Payload:
        return dump(await self.runtime.status())

    async def exec(self, data: Payload) -> Payload:
        return dump(await self.runtime.exec(parse(BoxSpec, data)))

    async def exec_stream(self, data: Payload) -> AsyncIterator[Payload]:
        async for item in self.runtime.exec_stream(parse(BoxSpec, data)):
            yield item

    async def create_session(self, data: Payload) -> Payload:
        return dump(await self.runtime.create_session(parse(BoxSpec, data)))

    async def get_session(self, data: Payload) -> Payload:
        ref = parse(SessionIdRequest, data)
        return self.runtime.get_session(ref.session_id).payload()

    async def get_sessions(self, _: Payload) -> Payload:
        return {"sessions": [dump(info) for info in self.runtime.list_sessions()]}

    async def delete_session(self, data: Payload) -> Payload:
        ref = parse(SessionIdRequest, data)
        await self.runtime.delete_session(ref.session_id)
        return {"deleted": ref.session_id}

    async def shutdown(self, _: Payload) -> Payload:
        await self.runtime.shutdown_sessions()
        return {}

    async def fs_read(self, data: Payload) -> Payload:
        return dump(await self.runtime.files.read(parse(FsReadRequest, data)))

    async def fs_write(self, data: Payload) -> Payload:
        return dump(await self.runtime.files.write(parse(FsWriteRequest, data)))

    async def fs_list(self, data: Payload) -> Payload:
        return dump(await self.runtime.files.list(parse(FsListRequest, data)))

    async def fs_stat(self, data: Payload) -> Payload:
        return dump(await self.runtime.files.stat(parse(FsRequest, data)))

    async def fs_remove(self, data: Payload) -> Payload:
        return dump(await self.runtime.files.remove(parse(FsRemoveRequest, data)))

    async def start_process(self, data: Payload) -> Payload:
        req = parse(StartProcessRequest, data)
        return dump(await self.runtime.processes.start(req.session_id, req.spec))

    async def get_process(self, data: Payload) -> Payload:
        ref = parse(ProcessRef, data)
        return dump(self.runtime.processes.get(ref.session_id, ref.process_id).info())

    async def stop_process(self, data: Payload) -> Payload:
        ref = parse(ProcessRef, data)
        await self.runtime.processes.stop(ref.session_id, ref.process_id)
        return {"stopped": ref.process_id}

    async def relay_info(self, _: Payload) -> Payload:
        return dump(self.relay)
