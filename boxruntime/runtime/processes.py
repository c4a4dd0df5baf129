"""Managed processes: long-lived processes in a session (MCP servers), with a stdio relay.

A process is the backend's lasting process (backends.contract) in its own process group: an
exec timeout never touches it. Its stdout is split into lines; while a relay
client is attached each line goes to it, otherwise the lines are kept (the last 1 MiB / 1000
lines) and delivered first on the next attach — output is not lost while nobody listens.
stderr feeds a rolling preview. Stop = close stdin, SIGTERM, SIGKILL after 5 s.

A process outlives its daemon where the sandbox does (re-adoption, runtime/readopt.py): the
session's record names it, and a successor takes it over (``ProcessManager.adopt``) with the
output it wrote meanwhile; a handover also passes on the lines read and not yet delivered.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from boxruntime.backends.contract import Command, CommandExit, Output, Process
from boxruntime.errors import (
    BoxManagedProcessConflictError,
    BoxManagedProcessNotFoundError,
    BoxRuntimeUnavailableError,
    BoxSandboxError,
)
from boxruntime.models import ManagedProcessInfo, ManagedProcessSpec, ManagedProcessStatus, utcnow
from boxruntime.runtime.records import ProcessRecord
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

REPLAY_MAX_BYTES = 1024 * 1024
REPLAY_MAX_LINES = 1000
STDERR_PREVIEW_CHARS = 4000
MAX_LINE_BYTES = 16 * 1024 * 1024
STOP_GRACE_SEC = 5.0
MAX_EXITED_PER_SESSION = 64
EXIT_DRAIN_SEC = 1.0


class ClientReplaced(Exception):
    """A newer relay client attached to the same process."""


@dataclass(eq=False)
class Attachment:
    """One relay client's view of a process: the lines meant for it, in order."""

    send: MemoryObjectSendStream[str]
    receive: MemoryObjectReceiveStream[str]
    replaced: bool = False


@dataclass(eq=False)
class ManagedProcess:
    session_id: str
    spec: ManagedProcessSpec
    process: Process
    started_at: dt.datetime = field(default_factory=utcnow)
    exited_at: dt.datetime | None = None
    exit_code: int | None = None
    stderr_preview: str = ""
    replay: deque[str] = field(default_factory=deque)
    replay_bytes: int = 0
    replay_dropped: int = 0
    attachment: Attachment | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    ref: str | None = None  # the backend's reference to it, for a successor (Backend.process_ref)
    # The pump stopped because the daemon is going, not the process: it may run on for a successor.
    abandoned: bool = False
    _partial: bytearray = field(default_factory=bytearray)

    @property
    def running(self) -> bool:
        return self.exited_at is None

    @classmethod
    def recovered(cls, session_id: str, kept: ProcessRecord, process: Process) -> ManagedProcess:
        """The process a dead daemon's record names, taken over (``process`` from the backend)."""
        managed = cls(
            session_id=session_id,
            spec=kept.spec,
            process=process,
            started_at=kept.started_at,
            stderr_preview=kept.stderr_preview,
            ref=kept.ref,
        )
        for line in kept.replay:
            managed._keep(line)
        managed._partial += kept.partial.encode("utf-8", "surrogateescape")
        return managed

    def record(self, handover: bool = False) -> ProcessRecord | None:
        """What a successor needs to take it over; None once it has exited (or cannot be)."""
        if self.ref is None or (not self.running and not self.abandoned):
            return None
        return ProcessRecord(
            process_id=self.spec.process_id,
            spec=self.spec,
            ref=self.ref,
            pid=self.process.pid,
            started_at=self.started_at,
            stderr_preview=self.stderr_preview,
            replay=list(self.replay) if handover else [],
            partial=bytes(self._partial).decode("utf-8", "surrogateescape") if handover else "",
        )

    def info(self) -> ManagedProcessInfo:
        return ManagedProcessInfo(
            session_id=self.session_id,
            process_id=self.spec.process_id,
            status=ManagedProcessStatus.RUNNING if self.running else ManagedProcessStatus.EXITED,
            command=self.spec.command,
            args=self.spec.args,
            cwd=self.spec.cwd,
            env_keys=sorted(self.spec.env),
            attached=self.attachment is not None,
            started_at=self.started_at,
            exited_at=self.exited_at,
            exit_code=self.exit_code,
            stderr_preview=self.stderr_preview,
            pending_output_bytes=self.replay_bytes,
            pid=self.process.pid,
        )

    # ── output ───────────────────────────────────────────────────────────

    def _lines(self, data: bytes) -> list[bytes]:
        self._partial += data
        lines = []
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            lines.append(bytes(self._partial[:end]))
            del self._partial[: end + 1]
        while len(self._partial) > MAX_LINE_BYTES:  # a "line" this long is no message; pass it on in pieces
            lines.append(bytes(self._partial[:MAX_LINE_BYTES]))
            del self._partial[:MAX_LINE_BYTES]
        return lines

    async def _deliver(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        if self.attachment is not None:
            # Waits while the client's buffer is full: a slow client slows the pump down.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.attachment.send.send(text)
                return
        self._keep(text)

    def _keep(self, text: str) -> None:
        self.replay.append(text)
        self.replay_bytes += len(text.encode("utf-8"))
        while len(self.replay) > REPLAY_MAX_LINES or self.replay_bytes > REPLAY_MAX_BYTES:
            dropped = self.replay.popleft()
            self.replay_bytes -= len(dropped.encode("utf-8"))
            self.replay_dropped += 1

    def _stderr(self, data: bytes) -> None:
        self.stderr_preview = (self.stderr_preview + data.decode("utf-8", "replace"))[-STDERR_PREVIEW_CHARS:]

    async def _exit(self, event: CommandExit) -> None:
        if self._partial:
            await self._deliver(bytes(self._partial))
            self._partial.clear()
        self.exit_code = event.code
        self.exited_at = utcnow()
        self.exited.set()
        if self.attachment is not None:
            self.attachment.send.close()  # the client reads what is left, then its relay ends

    async def pump(self) -> None:
        """Take the process's output until it exits (a task owned by the manager)."""
        exit = CommandExit(None, None, "signal", 0, None, None, 0, 0)
        try:
            async for event in self.process.events():
                if isinstance(event, Output):
                    if event.stream == 1:
                        for line in self._lines(event.data):
                            await self._deliver(line)
                    else:
                        self._stderr(event.data)
                else:
                    exit = event
        except BoxSandboxError as exc:  # the sandbox went away under the process
            self._stderr(f"\n[boxruntime: {exc}]".encode())
        except anyio.get_cancelled_exc_class():
            self.abandoned = True  # the daemon is going; the process is not (yet) known to end
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.process.close()
                await self._exit(exit)

    # ── relay side ───────────────────────────────────────────────────────

    def attach(self) -> Attachment:
        """Become the one attached client; a previous one is told it was replaced."""
        if self.attachment is not None:
            self.attachment.replaced = True
            self.attachment.send.close()
        # Room for the whole replay, then live lines wait for the client (see _deliver).
        send, receive = anyio.create_memory_object_stream[str](REPLAY_MAX_LINES * 2)
        while self.replay:
            send.send_nowait(self.replay.popleft())
        self.replay_bytes = 0
        attachment = Attachment(send, receive)
        self.attachment = attachment
        if not self.running:
            send.close()
        return attachment

    def release(self, attachment: Attachment) -> None:
        """The client has gone: it no longer counts as attached, and new output is kept for
        the next one. ``detach`` then takes back what it was sent but never read."""
        if self.attachment is attachment:
            self.attachment = None

    def detach(self, attachment: Attachment) -> None:
        self.release(attachment)
        # Lines handed to this client but not yet sent go back to the front of the replay.
        pending = []
        with contextlib.suppress(anyio.EndOfStream, anyio.WouldBlock, anyio.ClosedResourceError):
            while True:
                pending.append(attachment.receive.receive_nowait())
        attachment.receive.close()
        if not attachment.replaced:
            for line in reversed(pending):
                self.replay.appendleft(line)
                self.replay_bytes += len(line.encode("utf-8"))

    async def write_line(self, text: str) -> None:
        not_running = BoxManagedProcessConflictError(f"managed process {self.spec.process_id} is not running")
        if not self.running:
            raise not_running
        try:
            await self.process.write(text.encode("utf-8") + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise not_running from None

    # ── stopping ─────────────────────────────────────────────────────────

    async def stop(self) -> None:
        if not self.running:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, BoxSandboxError):
            await self.process.write(b"", eof=True)
        with contextlib.suppress(BoxSandboxError):
            await self.process.signal(signal.SIGTERM)
        with anyio.move_on_after(STOP_GRACE_SEC):
            await self.exited.wait()
        if self.running:
            with contextlib.suppress(BoxSandboxError):
                await self.process.signal(signal.SIGKILL)
            with anyio.move_on_after(STOP_GRACE_SEC):
                await self.exited.wait()


def process_command(spec: ManagedProcessSpec) -> Command:
    return Command(
        cwd=spec.cwd,
        env={"PYTHONUNBUFFERED": "1", **spec.env},  # the backend adds its base environment
        argv=[spec.command, *spec.args],
        stdin=True,
    )


class ProcessManager:
    """Starts, finds and stops managed processes; owns the tasks that read their output."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._tg: anyio.abc.TaskGroup | None = None
        self._adopted: list[tuple[Session, ManagedProcess]] = []  # pumped once run() starts
        sessions.on_remove.append(self.stop_session)

    async def run(self) -> None:
        """Own the pumps; runs until its owner cancels it (the runtime's background tasks), and
        the pumps end with it."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            adopted, self._adopted = self._adopted, []
            for session, process in adopted:
                tg.start_soon(self._pump, session, process, name=f"mp-{session.session_id}-{process.spec.process_id}")
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def running_count(self) -> int:
        return sum(1 for s in self._sessions.sessions() for p in s.processes.values() if p.running)

    def get(self, session_id: str, process_id: str) -> ManagedProcess:
        session = self._sessions.get(session_id)
        process = session.processes.get(process_id)
        if process is None:
            raise BoxManagedProcessNotFoundError(
                f"session {session_id} has no managed process with process_id={process_id}"
            )
        return process

    async def start(self, session_id: str, spec: ManagedProcessSpec) -> ManagedProcessInfo:
        tg = self._tg
        if tg is None:
            raise BoxRuntimeUnavailableError("the runtime is not running its background tasks")
        async with self._sessions.lease_existing(session_id) as session:
            previous = session.processes.get(spec.process_id)
            if previous is not None:
                await previous.stop()  # same process_id replaces
            started = await session.backend.start_command(session.handle, process_command(spec), lasting=True)
            try:
                await started.started()
            except BaseException:
                started.cancel()
                with anyio.CancelScope(shield=True):
                    await started.close()
                raise
            process = ManagedProcess(
                session_id=session_id, spec=spec, process=started, ref=session.backend.process_ref(started)
            )
            session.processes[spec.process_id] = process
            self._forget_old_exits(session)
            self._sessions.save(session)
            tg.start_soon(self._pump, session, process, name=f"mp-{session_id}-{spec.process_id}")
        log.info("session %s: managed process %s started (%s)", session_id, spec.process_id, spec.command)
        return process.info()

    def adopt(self, session: Session, process: ManagedProcess) -> None:
        """A process taken over from a dead daemon (runtime/readopt.py): its output is pumped
        from now on (once ``run`` has started)."""
        session.processes[process.spec.process_id] = process
        if self._tg is None:
            self._adopted.append((session, process))
        else:
            self._tg.start_soon(self._pump, session, process, name=f"mp-{session.session_id}-{process.spec.process_id}")

    async def _pump(self, session: Session, process: ManagedProcess) -> None:
        await process.pump()
        session.touch()
        self._sessions.save(session)
        log.info(
            "session %s: managed process %s exited with %s",
            process.session_id, process.spec.process_id, process.exit_code,
        )  # fmt: skip

    @staticmethod
    def _forget_old_exits(session: Session) -> None:
        exited = [pid for pid, p in session.processes.items() if not p.running]
        for pid in exited[:-MAX_EXITED_PER_SESSION]:
            del session.processes[pid]

    async def stop(self, session_id: str, process_id: str) -> None:
        async with self._sessions.lease_existing(session_id) as session:
            process = self.get(session_id, process_id)
            await process.stop()
            session.processes.pop(process_id, None)
            self._sessions.save(session)

    async def stop_session(self, session: Session) -> None:
        async with anyio.create_task_group() as tg:
            for process in list(session.processes.values()):
                tg.start_soon(process.stop)


async def relay_lines(attachment: Attachment) -> AsyncIterator[str]:
    """The lines for one relay client; raises ClientReplaced if another client took over."""
    async for line in attachment.receive:
        yield line
    if attachment.replaced:
        raise ClientReplaced()
