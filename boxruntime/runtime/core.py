"""BoxRuntime: settings, the selected backend, sessions and exec, behind one object.

The server and the stdio loop each hold one; handlers translate actions into its methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Literal

import anyio

from boxruntime.backends.contract import Backend, Command, CompletedCommand, Output
from boxruntime.backends.selection import select_backend
from boxruntime.config import Settings, apply_box_config
from boxruntime.errors import BoxBackendUnavailableError, BoxRuntimeUnavailableError, BoxValidationError
from boxruntime.instance import InstanceLock
from boxruntime.metrics import Live, Metrics
from boxruntime.models import (
    OUTPUT_CAP_BYTES,
    BackendInfo,
    BoxSpec,
    ExecResult,
    OutputChunk,
    RuntimeStatus,
    SessionDetails,
    SessionInfo,
    StreamedResult,
)
from boxruntime.runtime.chunks import ChunkText
from boxruntime.runtime.commands import CommandManager
from boxruntime.runtime.files import SessionFiles
from boxruntime.runtime.pool import WarmPool
from boxruntime.runtime.processes import ProcessManager
from boxruntime.runtime.readopt import take_over
from boxruntime.runtime.records import RecordBook
from boxruntime.runtime.results import exec_result
from boxruntime.runtime.sessions import SessionManager
from boxruntime.runtime.suspend import Suspender

log = logging.getLogger(__name__)

WORKSPACE_SWEEP_INTERVAL_SEC = 60.0


class BoxRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = InstanceLock(settings.data_dir)
        self.instance_id = self.instance.instance_id
        self._backend: Backend[Any] | None = None
        self._backend_info: BackendInfo | None = None
        self._backend_lock = anyio.Lock()
        self._closing = False
        self.pool = WarmPool(self.backend, settings)
        self.records = RecordBook(settings.data_dir, self.instance_id)
        self.sessions = SessionManager(
            self.backend,
            max_sessions=lambda: self.settings.max_sessions,
            ttl_sec=lambda: self.settings.session_ttl_sec,
            pool=self.pool,
            records=self.records if settings.readopt else None,
        )
        self.files = SessionFiles(self.sessions)
        self.processes = ProcessManager(self.sessions)
        self.commands = CommandManager(self.sessions)
        self.metrics = Metrics()  # this daemon's own registry: /metrics
        self.metrics.watch(
            Live(
                sessions=lambda: ((s.handle.backend, s.info().status.value) for s in self.sessions.sessions()),
                managed_processes=self._running_processes,
                pool=lambda: (self.pool.status().ready, self.pool.size) if self.pool.size > 0 else None,
                backend=lambda: self._backend.name if self._backend is not None else None,
            )
        )
        self.sessions.on_create.append(lambda new, pooled: self.metrics.session_created(new.handle.backend, pooled))
        self.suspender = Suspender(self.sessions, settings)
        self.readopted: list[str] = []  # sessions taken over from dead daemons at start

    def _running_processes(self) -> Iterator[str]:
        for session in self.sessions.sessions():
            for process in session.processes.values():
                if process.running:
                    yield session.handle.backend

    # ── lifecycle ────────────────────────────────────────────────────────

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.instance.acquire()
        try:
            backend = await self.backend()
        except BoxBackendUnavailableError as exc:
            log.warning("%s", exc)  # serve anyway: box_init may select another backend
            return
        # Dead daemons' sandboxes: taken over (runtime/readopt.py), or removed.
        self.readopted = await take_over(
            self.records, backend, self.sessions, self.processes, enabled=self.settings.readopt
        )
        if self.readopted:
            self.metrics.readoptions.labels(backend.name).inc(len(self.readopted))
        await self.sweep_workspaces()

    async def sweep_workspaces(self) -> None:
        """Let the backend remove the workspaces no session has used for ``workspace_ttl_sec``."""
        backend = self._backend
        if backend is None:
            return
        try:
            await backend.sweep_workspaces(float(self.settings.workspace_ttl_sec))
        except Exception:
            log.exception("sweeping idle workspaces failed")

    async def _sweep_periodically(self) -> None:
        while True:
            await anyio.sleep(WORKSPACE_SWEEP_INTERVAL_SEC)
            await self.sweep_workspaces()
            await self._backend_upkeep()

    async def _backend_upkeep(self) -> None:
        """The selected backend's own periodic work (the e2b backend renews its sandboxes)."""
        backend = self._backend
        if backend is None:
            return
        try:
            await backend.upkeep()
        except Exception:
            log.exception("backend upkeep failed")

    async def run_background(self) -> None:
        """The reaper, the warm pool, and the pumps of managed processes and commands; run until
        cancelled by the owner of the runtime."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.sessions.run_reaper, lambda: float(min(30, self.settings.session_ttl_sec)))
            tg.start_soon(self.pool.run)
            tg.start_soon(self.processes.run)
            tg.start_soon(self.commands.run)
            tg.start_soon(self._sweep_periodically)
            tg.start_soon(self.suspender.run)

    async def close(self, keep: bool = False) -> bool:
        """Remove every sandbox this daemon created, then release the backend. ``keep`` (a
        handover): leave the sessions' sandboxes and managed processes running, their records
        written in full, for a successor; only where the backend's sandboxes outlive the daemon
        and ``readopt`` is on. Returns whether sandboxes were kept."""
        self._closing = True
        backend = self._backend
        kept = keep and self.settings.readopt and backend is not None and backend.survives_daemon()
        with anyio.CancelScope(shield=True):
            if kept:
                for session in self.sessions.hand_over():
                    await session.backend.release(session.handle)
            # Everything not handed over (all of it, without a handover) is removed.
            await self.sessions.remove_all(include_persistent=True, keep_workspaces=True)
            await self.pool.drain()
            if backend is not None:
                if not kept:
                    leftovers = await backend.remove_own()
                    if leftovers:
                        log.info("removed unregistered sandboxes: %s", ", ".join(leftovers))
                await backend.close()
                self._backend = None
            self.instance.release()
        return kept

    # ── backend ──────────────────────────────────────────────────────────

    async def backend(self) -> Backend[Any]:
        if self._closing:
            raise BoxRuntimeUnavailableError("Box runtime is shutting down")
        async with self._backend_lock:
            if self._backend is None:
                self._backend, self._backend_info = await select_backend(self.settings, self.instance_id)
            return self._backend

    async def backend_info(self) -> BackendInfo:
        try:
            backend = await self.backend()
        except BoxBackendUnavailableError as exc:
            return BackendInfo(name=None, available=False, reason=str(exc))
        info = await backend.probe()
        self._backend_info = info
        return info

    async def init(self, config: dict[str, Any]) -> None:
        apply_box_config(self.settings, config)
        if len(self.sessions) == 0:
            async with self._backend_lock:
                # A creation in flight already holds the backend: closing it now would strand it.
                idle = len(self.sessions) == 0 and self.sessions.creating == 0
                if self._backend is not None and idle:
                    await self.pool.drain()
                    await self._backend.close()
                    self._backend = None  # selected again on next use, as LangBot does

    async def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            backend=await self.backend_info(),
            active_sessions=len(self.sessions),
            managed_processes=self.processes.running_count(),
            session_ttl_sec=self.settings.session_ttl_sec,
            max_sessions=self.settings.max_sessions,
            pool=self.pool.status(),
        )

    # ── sessions ─────────────────────────────────────────────────────────

    async def create_session(self, spec: BoxSpec) -> SessionInfo:
        async with self.sessions.lease(spec) as session:
            pass
        return session.info()  # after the lease: a fresh session is idle, not running

    def get_session(self, session_id: str) -> SessionDetails:
        session = self.sessions.get(session_id)
        details = SessionDetails(**session.info().model_dump())
        if session.processes:
            details.managed_processes = {pid: p.info() for pid, p in session.processes.items()}
            if "default" in session.processes:
                details.managed_process = session.processes["default"].info()
        return details

    def list_sessions(self) -> list[SessionInfo]:
        return [s.info() for s in self.sessions.sessions()]

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id)

    async def shutdown_sessions(self) -> list[str]:
        """LangBot's ``box_shutdown``: drop non-persistent sessions; the daemon keeps running."""
        return await self.sessions.remove_all(include_persistent=False, keep_workspaces=False)

    # ── exec ─────────────────────────────────────────────────────────────

    @staticmethod
    def _command(spec: BoxSpec) -> Command:
        if not spec.cmd:
            raise BoxValidationError("cmd must not be empty")
        return Command(
            cwd=spec.workdir,
            env=spec.env,
            script=spec.cmd,
            timeout=float(spec.timeout_sec),
            output_cap=OUTPUT_CAP_BYTES,
        )

    async def exec(self, spec: BoxSpec) -> ExecResult:
        command = self._command(spec)
        asked = time.monotonic()
        async with self.sessions.lease(spec) as session:
            backend = session.handle.backend
            try:
                done = await session.backend.run(session.handle, command)
            except anyio.get_cancelled_exc_class():
                self.metrics.exec_ended(backend, "cancelled", time.monotonic() - asked)
                raise
        self.metrics.exec_ended(backend, done.exit.reason, time.monotonic() - asked)
        return exec_result(spec.session_id, backend, done, float(spec.timeout_sec), OUTPUT_CAP_BYTES)

    async def exec_stream(self, spec: BoxSpec) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        """Output chunks as they are produced, then the result (``box_exec_stream``). A caller
        that stops reading ends the command."""
        command = self._command(spec)
        asked = time.monotonic()
        decoders = {1: ChunkText(), 2: ChunkText()}
        collected: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        async with self.sessions.lease(spec) as session:
            process = await session.backend.start_command(session.handle, command)
            finished = False
            try:
                async for event in process.events():
                    if isinstance(event, Output):
                        collected[event.stream].extend(event.data)
                        text, encoding = decoders[event.stream].convert(event.data)
                        name: Literal["stdout", "stderr"] = "stdout" if event.stream == 1 else "stderr"
                        yield OutputChunk(stream=name, data=text, encoding=encoding)
                    else:
                        finished = True
                        self.metrics.exec_ended(session.handle.backend, event.reason, time.monotonic() - asked)
                        done = CompletedCommand(event, bytes(collected[1]), bytes(collected[2]))
                        timeout = float(spec.timeout_sec)
                        result = exec_result(spec.session_id, session.handle.backend, done, timeout, OUTPUT_CAP_BYTES)
                        yield StreamedResult(result=result)
            finally:
                if not finished:
                    process.cancel()  # nobody reads any more: the command must not go on
                    self.metrics.exec_ended(session.handle.backend, "cancelled", time.monotonic() - asked)
                with anyio.CancelScope(shield=True):
                    await process.close()
