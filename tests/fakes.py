"""An in-memory sandbox backend for fast runtime tests (no Docker, no agent).

It keeps the ``Backend`` contract the runtime relies on: ``start`` returns a fresh handle per
sandbox, output is capped per stream at the command's ``output_cap`` while totals count every
byte (as the in-sandbox agent does), a command on a removed sandbox raises ``BoxSandboxError``,
and ``stop`` never raises for a sandbox that is already gone. Tests steer it through plain
attributes: gates to hold a call open, failures to inject, scripted command results.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from boxruntime.backends.contract import (
    Backend,
    Command,
    CommandExit,
    CompletedCommand,
    Output,
    Process,
    ProcessEvent,
    SandboxHandle,
    TerminalSize,
)
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError
from boxruntime.models import BackendInfo, BoxSpec

CHUNK = 64 * 1024  # the agent forwards output in reads of this size


@dataclass(frozen=True)
class Scripted:
    """What the next command "prints" and how it ends."""

    code: int | None = 0
    stdout: bytes = b""
    stderr: bytes = b""
    reason: str = "exit"  # exit | signal | timeout | oom | cancelled
    signal: int | None = None
    wall_ms: int = 7
    cpu_ms: int = 3
    peak_rss_kb: int = 1024

    @classmethod
    def timeout(cls, stdout: bytes = b"", stderr: bytes = b"") -> Scripted:
        # As the agent reports a command it killed at its deadline: 128 + SIGKILL.
        return cls(code=137, stdout=stdout, stderr=stderr, reason="timeout", signal=9)


@dataclass(kw_only=True)
class FakeSandbox(SandboxHandle):
    session_id: str


class StreamedFake:
    """A started fake command: its output in pieces, then its end."""

    def __init__(self, events: list[ProcessEvent]) -> None:
        self._events = events
        self.cancelled = False

    @property
    def pid(self) -> int | None:
        return 1

    async def started(self) -> int:
        return 1

    async def events(self) -> AsyncIterator[ProcessEvent]:
        for event in self._events:
            await anyio.lowlevel.checkpoint()
            yield event

    async def write(self, data: bytes, eof: bool = False) -> None:
        raise BoxSandboxError("fake commands take no input")

    async def resize(self, size: TerminalSize) -> None:
        raise BoxSandboxError("fake commands have no terminal")

    async def signal(self, sig: int, *, until_gone: bool = False, cancel: bool = False) -> None:
        self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True

    async def close(self) -> None:
        return None


class FakeBackend(Backend[FakeSandbox]):
    name = "fake"

    def __init__(self, settings: Settings | None = None, instance_id: str = "fake0instance") -> None:
        super().__init__(settings or Settings(data_dir=Path("/nonexistent/boxruntime-fake")), instance_id)
        self.calls: list[tuple[str, str]] = []  # (method, session id or sandbox id)
        self.start_gates: dict[str, anyio.Event] = {}  # session id -> start waits for it
        self.alive_gates: dict[str, anyio.Event] = {}  # session id -> alive() waits for it
        self.entered: dict[str, anyio.Event] = {}  # session id -> set when start() begins
        self.fail_start: dict[str, Exception] = {}  # session id -> start raises it (once)
        self.dead: set[str] = set()  # sandbox ids alive() reports as gone
        self.results: list[Scripted] = []  # consumed in order; default: exit 0, no output
        self.requests: list[Command] = []
        self.live: dict[str, SandboxHandle] = {}  # sandbox id -> handle
        self.stopped: list[tuple[str, bool]] = []  # (sandbox id, keep_workspace)
        self.available = True
        self.closed = False
        self._serial = itertools.count(1)
        # Sandboxes that outlive the daemon: a successor's FakeBackend shares ``live`` and
        # ``frozen`` with its predecessor's (as a real engine would keep containers).
        self.survives = False
        self.freezable = False
        self.frozen: set[str] = set()

    def started(self, session_id: str) -> anyio.Event:
        """An event set when ``start`` for this id is entered (create it before the call)."""
        return self.entered.setdefault(session_id, anyio.Event())

    def gate(self, session_id: str) -> anyio.Event:
        """Hold every ``start`` of this id until the returned event is set."""
        return self.start_gates.setdefault(session_id, anyio.Event())

    def starts(self, session_id: str | None = None) -> int:
        return sum(1 for m, sid in self.calls if m == "start" and (session_id is None or sid == session_id))

    # ── Backend interface ────────────────────────────────────────────────

    async def probe(self) -> BackendInfo:
        self.calls.append(("probe", ""))
        if not self.available:
            return BackendInfo(name=self.name, available=False, reason="fake backend switched off")
        return BackendInfo(name=self.name, available=True, enforced_limits={"memory_mb": "fake"})

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> FakeSandbox:
        self.calls.append(("start", spec.session_id))
        if spec.session_id in self.entered:
            self.entered[spec.session_id].set()
        if spec.session_id in self.start_gates:
            await self.start_gates[spec.session_id].wait()
        if spec.session_id in self.fail_start:
            raise self.fail_start.pop(spec.session_id)
        handle = FakeSandbox(
            backend=self.name, sandbox_id=f"fake-{key}-{next(self._serial)}", key=key, session_id=spec.session_id
        )
        self.live[handle.sandbox_id] = handle
        return handle

    def _next(self, handle: FakeSandbox, req: Command) -> Scripted:
        self.calls.append(("exec", handle.sandbox_id))
        if handle.sandbox_id not in self.live or handle.sandbox_id in self.dead:
            raise BoxSandboxError(f"sandbox {handle.sandbox_id} is gone")
        if handle.sandbox_id in self.frozen:
            raise BoxSandboxError(f"sandbox {handle.sandbox_id} is frozen: a command would wait forever")
        self.requests.append(req)
        return self.results.pop(0) if self.results else Scripted()

    @staticmethod
    def _exit(script: Scripted) -> CommandExit:
        return CommandExit(
            code=script.code,
            signal=script.signal,
            reason=script.reason,
            wall_ms=script.wall_ms,
            cpu_ms=script.cpu_ms,
            peak_rss_kb=script.peak_rss_kb,
            stdout_total=len(script.stdout),
            stderr_total=len(script.stderr),
        )

    async def run(self, handle: FakeSandbox, command: Command) -> CompletedCommand:
        script = self._next(handle, command)
        await anyio.lowlevel.checkpoint()
        cap = command.output_cap
        return CompletedCommand(self._exit(script), script.stdout[:cap], script.stderr[:cap])

    async def start_command(self, handle: FakeSandbox, command: Command, *, lasting: bool = False) -> Process:
        if lasting:
            raise BoxSandboxError("the fake backend has no lasting processes")
        script = self._next(handle, command)
        cap = command.output_cap
        events: list[ProcessEvent] = []
        for stream, data in ((1, script.stdout[:cap]), (2, script.stderr[:cap])):
            events += [Output(stream, data[offset : offset + CHUNK]) for offset in range(0, len(data), CHUNK)]
        events.append(self._exit(script))
        return StreamedFake(events)

    async def stop(self, handle: FakeSandbox, keep_workspace: bool = False) -> None:
        self.calls.append(("stop", handle.sandbox_id))
        self.stopped.append((handle.sandbox_id, keep_workspace))
        await anyio.lowlevel.checkpoint()
        self.live.pop(handle.sandbox_id, None)  # already gone is fine: stop never raises for it

    async def alive(self, handle: FakeSandbox) -> bool:
        self.calls.append(("alive", handle.sandbox_id))
        gate = self.alive_gates.get(handle.session_id)
        if gate is not None:
            await gate.wait()
        return handle.sandbox_id in self.live and handle.sandbox_id not in self.dead

    def survives_daemon(self) -> bool:
        return self.survives

    def describe(self, handle: FakeSandbox) -> dict[str, Any]:
        return {"sandbox_id": handle.sandbox_id}

    async def recover(self, spec: BoxSpec, key: str, described: Mapping[str, Any]) -> FakeSandbox | None:
        self.calls.append(("recover", spec.session_id))
        handle = self.live.get(str(described.get("sandbox_id")))
        if not isinstance(handle, FakeSandbox):
            return None
        self.frozen.discard(handle.sandbox_id)  # a recovered sandbox comes back thawed
        return handle

    def can_freeze(self) -> bool:
        return self.freezable

    async def freeze(self, handle: FakeSandbox) -> None:
        self.calls.append(("freeze", handle.sandbox_id))
        await anyio.lowlevel.checkpoint()
        self.frozen.add(handle.sandbox_id)

    async def thaw(self, handle: FakeSandbox) -> None:
        self.calls.append(("thaw", handle.sandbox_id))
        await anyio.lowlevel.checkpoint()
        self.frozen.discard(handle.sandbox_id)

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        self.calls.append(("cleanup_orphans", ",".join(sorted(spare))))
        return []

    async def remove_own(self) -> list[str]:
        self.calls.append(("remove_own", ""))
        leftovers = list(self.live)
        self.live.clear()
        return leftovers

    async def close(self) -> None:
        self.calls.append(("close", ""))
        self.closed = True
