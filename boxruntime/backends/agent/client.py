"""Host side of the in-sandbox agent: one multiplexed unix-socket connection per sandbox.

The agent runs inside the sandbox, so everything it sends is untrusted input: frames are size
checked and events type checked, and anything malformed drops the connection (the next call
reconnects) rather than reaching the daemon's logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from boxruntime.backends.agent.commands import (
    CommandExit,
    CommandRequest,
    CompletedCommand,
    Event,
    Output,
    event_int,
    parse_exit,
    spawn_header,
)
from boxruntime.backends.agent.fd_passing import HandedPipes, fetch_fds, open_stdio, pipes_from, stdio_tokens
from boxruntime.backends.agent.frames import FrameProtocol
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.agent.watch import AgentWatch, parse_events
from boxruntime.backends.contract import SandboxFileError
from boxruntime.errors import BoxSandboxError, BoxValidationError

log = logging.getLogger(__name__)

AGENT_SOCKET_NAME = "agent.sock"
# Time the daemon allows past a command's own timeout for the agent to report the kill.
REPORT_GRACE_SEC = 10.0
HELLO_TIMEOUT_SEC = 5.0  # the agent greets a new connection at once
# Input is answered once the command has taken it, which may be never: its exit, or the end of
# the connection, answers it too.
INPUT_TIMEOUT_SEC = 24 * 3600.0
_MAX_UNIX_PATH = 100
# Process ids outlive the daemon that chose them (kept processes, re-adopted by a successor):
# each daemon process spells its own, so a successor never reuses one still in the agent.
_PROC_ID_PREFIX = secrets.token_hex(4)


class AgentLostError(BoxSandboxError):
    """The connection to the sandbox's agent broke; the sandbox may still be alive."""


class AgentOpError(SandboxFileError):
    """The agent refused or failed a request/reply operation; ``code`` is an errno name."""


def _frame(header: dict[str, Any], body: bytes) -> bytes:
    """The frame for ``header`` and ``body``; BoxValidationError for one over the wire's limits,
    refused here: the agent would drop the connection, and every command on it."""
    try:
        return wire.encode(header, body)
    except wire.FrameTooLarge as exc:
        raise BoxValidationError(f"request too large for the sandbox agent ({exc})") from None


class AgentProcess:
    """A process running under the agent: its events, and the means to feed or signal it."""

    def __init__(self, client: AgentClient, proc_id: str, keep: bool) -> None:
        self._client = client
        self.id = proc_id
        self.keep = keep
        self.pid: int | None = None
        self.exit: CommandExit | None = None
        self.stdio: HandedPipes | None = None  # its stdio sockets, until taken (pass_fds=False)
        self._events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._sink: Callable[[Event | BaseException], None] | None = None
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[int] = loop.create_future()
        # A collected command's one result (spawned with ``collect``: no output events).
        self._completed: asyncio.Future[CompletedCommand] = loop.create_future()
        # Callers that never await these must not leave "exception never retrieved" noise.
        for fut in (self._started, self._completed):
            fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())

    def _deliver(self, event: Event | BaseException) -> None:
        if isinstance(event, CommandExit):
            self.exit = event
        if self._sink is not None:
            self._sink(event)
        else:
            self._events.put_nowait(event)

    def deliver_to(self, sink: Callable[[Event | BaseException], None]) -> None:
        """Hand every event (output, the exit, or the error that ended it) to ``sink`` as it
        arrives, in the frame's own callback, instead of queueing it for ``events()``; what is
        queued already goes first."""
        while not self._events.empty():
            sink(self._events.get_nowait())
        self._sink = sink

    def _adopted(self, pid: int | None) -> None:
        """A kept process a previous daemon started: it runs already (as ``pid``)."""
        self.pid = pid
        if not self._started.done():
            self._started.set_result(pid or 0)

    def _complete(self, done: CompletedCommand) -> None:
        self.exit = done.exit
        if not self._completed.done():
            self._completed.set_result(done)

    def _fail_start(self, exc: BaseException) -> None:
        self.close_stdio()
        for fut in (self._started, self._completed):
            if not fut.done():
                fut.set_exception(exc)
        self._deliver(exc)

    def close_stdio(self) -> None:
        stdio, self.stdio = self.stdio, None
        for fd in () if stdio is None else (stdio.stdin, stdio.stdout, stdio.stderr):
            if fd is not None:
                os.close(fd)

    async def started(self) -> int:
        return await self._started

    async def events(self) -> AsyncIterator[Event]:
        """Output as it comes, ending with the CommandExit."""
        while True:
            event = await self._events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, CommandExit):
                return

    async def signal(self, sig: int = signal.SIGTERM, cancel: bool = False) -> None:
        await self._client._send(
            {wire.OP: wire.Op.SIGNAL, wire.ID: self.id, wire.Signal.SIGNAL: int(sig), wire.Signal.CANCEL: cancel}
        )

    async def write_input(self, data: bytes, eof: bool = False) -> None:
        """Feed the command's stdin (spawned with ``stdin`` or ``tty``); returns once the agent
        has written it, so a command that reads slowly slows the writer down. ``eof`` closes
        the stdin after ``data``. BoxValidationError once the command takes no more input."""
        fields = {wire.TARGET: self.id, wire.Input.EOF: eof}
        await self._client.request(wire.Op.INPUT, fields, data, timeout=INPUT_TIMEOUT_SEC)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the command's terminal (spawned with ``tty``)."""
        fields = {wire.TARGET: self.id, wire.Window.ROWS: rows, wire.Window.COLS: cols}
        await self._client.request(wire.Op.RESIZE, fields)

    async def signal_sent(self, sig: int, timeout: float = 10.0, cancel: bool = False) -> None:
        """Signal the process's tree, and return once the agent has sent the signal, or, for
        SIGKILL, once the process is gone (a caller that answers "killed" must not answer
        before it is)."""
        fields = {wire.ID: self.id, wire.Signal.SIGNAL: int(sig), wire.Signal.CANCEL: cancel}
        await self._client.request(wire.Op.SIGNAL, fields, timeout=timeout, token_field=wire.Signal.ACK)

    def kill_soon(self) -> None:
        """Best-effort SIGKILL without awaiting: usable while the caller is being cancelled."""
        self._client._send_nowait(
            {
                wire.OP: wire.Op.SIGNAL,
                wire.ID: self.id,
                wire.Signal.SIGNAL: int(signal.SIGKILL),
                wire.Signal.CANCEL: True,
            }
        )


class AgentClient:
    """One connection to one sandbox's agent; reconnects on demand after a loss.

    ``pass_fds``: the agent hands a managed process's pipes over the socket (SCM_RIGHTS). Where
    it cannot (gVisor), the daemon's own sockets become the process's stdio (fd_passing).
    """

    _ids = itertools.count(1)

    def __init__(self, socket_dir: Path, name: str, pass_fds: bool = True) -> None:
        self.socket_dir = socket_dir
        self.name = name
        self.pass_fds = pass_fds
        self._writer: asyncio.StreamWriter | None = None
        self._protocol: FrameProtocol | None = None
        self._procs: dict[str, AgentProcess] = {}
        self._replies: dict[str, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._watches: dict[str, AgentWatch] = {}
        self._connect_lock = asyncio.Lock()
        self._dir_fd: int | None = None
        self._ever_connected = False
        self.reconnects = 0
        # The kept processes nobody was attached to when this client first connected (a
        # successor daemon's view of what its predecessor left running): Hello.DETACHED.
        self.detached_at_start: list[str] = []

    # ── connection ───────────────────────────────────────────────────────

    def _socket_path(self) -> str:
        path = str(self.socket_dir / AGENT_SOCKET_NAME)
        if len(path) <= _MAX_UNIX_PATH:
            return path
        # sun_path holds ~108 bytes; reach a deep socket through a directory descriptor.
        if self._dir_fd is None:
            self._dir_fd = os.open(self.socket_dir, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._dir_fd}/{AGENT_SOCKET_NAME}"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> None:
        """Connect, waiting up to ``timeout`` for the agent to start listening."""
        async with self._connect_lock:
            if self.connected:
                return
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + timeout
            delay = 0.002
            while True:
                try:
                    transport, protocol = await loop.create_unix_connection(
                        lambda: FrameProtocol(self._on_frame, self._connection_ended), self._socket_path()
                    )
                    break
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    if time.monotonic() >= deadline or (alive is not None and not alive()):
                        raise BoxSandboxError(
                            f"sandbox agent for {self.name} is not answering on {self.socket_dir}: {exc}"
                        ) from exc
                    await asyncio.sleep(delay)
                    # Cold starts wait here: poll often, the agent usually appears within 100 ms.
                    delay = min(delay * 1.5, 0.01)
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
            try:
                async with asyncio.timeout(max(HELLO_TIMEOUT_SEC, deadline - time.monotonic())):
                    hello, _ = await protocol.hello
            except (ConnectionError, TimeoutError):
                hello = {}
            if hello.get(wire.EV) != wire.Ev.HELLO:
                transport.close()
                raise BoxSandboxError(f"sandbox agent for {self.name} sent no greeting")
            if self._ever_connected:
                self.reconnects += 1
            else:
                detached = hello.get(wire.Hello.DETACHED)
                if isinstance(detached, list):
                    self.detached_at_start = [str(d) for d in detached][:10000]
            self._ever_connected = True
            self._writer, self._protocol = writer, protocol
            for proc in self._procs.values():
                if proc.keep:  # long-lived processes survive; collect what they wrote meanwhile
                    self._send_nowait({wire.OP: wire.Op.ATTACH, wire.ID: proc.id})

    def _connection_ended(self, protocol: FrameProtocol, reason: str) -> None:
        if self._protocol is not protocol:
            return  # a connection that never became the current one, or was closed
        if reason.startswith("protocol error"):
            log.warning("agent %s: %s; dropping the connection", self.name, reason)
        if self._writer is not None:
            self._writer.close()
        self._writer = self._protocol = None
        self._fail_all(AgentLostError(f"connection to sandbox agent {self.name} lost ({reason})"))

    async def close(self) -> None:
        writer, self._writer, self._protocol = self._writer, None, None
        if writer is not None:
            writer.close()
        self._fail_all(AgentLostError(f"sandbox {self.name} closed"), include_kept=True)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _fail_all(self, exc: AgentLostError, include_kept: bool = False) -> None:
        for proc_id, proc in list(self._procs.items()):
            if proc.keep and not include_kept:
                continue  # re-attached on the next connect
            self._procs.pop(proc_id, None)
            proc._fail_start(exc)
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(exc)
        self._replies.clear()
        for watch in self._watches.values():
            watch._deliver(exc)  # a watch does not survive its connection (the agent ends it)
        self._watches.clear()

    def _on_frame(self, header: dict[str, Any], body: bytes) -> None:
        ev = header.get(wire.EV)
        proc_id = header.get(wire.ID)
        if ev == wire.Ev.ERROR and str(proc_id) in self._replies:
            # A request the agent could not handle at all: its reply is this error.
            header = {wire.ERROR: header.get(wire.ERROR, "unknown agent error"), wire.CODE: "EIO"}
            ev = wire.Ev.REPLY
        if ev == wire.Ev.REPLY:
            fut = self._replies.pop(str(proc_id), None)
            if fut is not None and not fut.done():
                fut.set_result((header, body))
            return
        if ev == wire.Ev.FSEVENT:
            watch = self._watches.get(str(proc_id))
            if watch is not None:
                watch._deliver(parse_events(header))
            return
        proc = self._procs.get(proc_id) if isinstance(proc_id, str) else None
        if proc is None:
            return  # stale or unknown process; harmless
        if ev == wire.Ev.OUT:
            stream = event_int(header, wire.Out.STREAM)
            if stream not in (1, 2):
                raise ValueError("agent output stream unknown")
            proc._deliver(Output(stream, body))
        elif ev == wire.Ev.STARTED:
            proc.pid = event_int(header, wire.Started.PID)
            if not proc._started.done():
                proc._started.set_result(proc.pid)
        elif ev == wire.Ev.EXIT:
            self._procs.pop(proc.id, None)
            done = parse_exit(header)
            if wire.Exit.OUT_LEN in header:  # a collected command: its output rides with the exit
                split = event_int(header, wire.Exit.OUT_LEN)
                if not 0 <= split <= len(body):
                    raise ValueError("agent exit out_len outside the body")
                proc._complete(CompletedCommand(done, body[:split], body[split:]))
            else:
                proc._deliver(done)
        elif ev in (wire.Ev.FAILED, wire.Ev.ERROR):
            message = str(header.get(wire.ERROR, "unknown agent error"))[:2000]
            if not proc._started.done() or ev == wire.Ev.FAILED:
                self._procs.pop(proc.id, None)
                proc._fail_start(BoxValidationError(message))
            else:
                log.warning("agent %s: process %s: %s", self.name, proc.id, message)

    async def _send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self._send_nowait(header, body)
        if self._writer is not None and len(body) > 65536:
            await self._writer.drain()

    def _send_nowait(self, header: dict[str, Any], body: bytes = b"") -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise AgentLostError(f"not connected to sandbox agent {self.name}")
        writer.write(_frame(header, body))

    # ── operations ───────────────────────────────────────────────────────

    async def request(
        self, op: str, fields: dict[str, Any], body: bytes = b"", timeout: float = 30.0, token_field: str = wire.ID
    ) -> tuple[dict[str, Any], bytes]:
        """One request/reply exchange (ping, file operations); errors come back as AgentOpError.
        The reply names the request by ``token_field`` (``id``, unless the op uses that already)."""
        token = f"r{next(self._ids)}"
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        self._replies[token] = fut
        try:
            await self._send({**fields, wire.OP: op, token_field: token}, body)
            header, data = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BoxSandboxError(
                f"sandbox agent {self.name} did not answer a {op} request within {timeout:g} s"
            ) from None
        finally:
            self._replies.pop(token, None)
        if wire.ERROR in header:
            raise AgentOpError(str(header[wire.ERROR])[:2000], str(header.get(wire.CODE, "EINVAL")))
        return header, data

    async def ping(self, timeout: float = 5.0) -> None:
        await self.request(wire.Op.PING, {}, timeout=timeout)

    async def watch(self, fields: dict[str, Any]) -> AgentWatch:
        """Watch a directory (``path``, ``recursive``, ``roots``); events until ``close()``."""
        watch = AgentWatch(f"w{next(self._ids)}", self._unwatch)
        self._watches[watch.id] = watch  # before the reply: the first events may follow it at once
        try:
            await self.request(wire.Op.WATCH, {**fields, wire.Watch.WATCH: watch.id})
        except BaseException:
            self._watches.pop(watch.id, None)
            raise
        return watch

    def _unwatch(self, watch_id: str) -> None:
        if self._watches.pop(watch_id, None) is not None:
            self._send_nowait({wire.OP: wire.Op.UNWATCH, wire.Watch.WATCH: watch_id})

    async def take_fds(self, proc: AgentProcess, timeout: float = 10.0) -> HandedPipes:
        """The pipes of a process spawned with ``handoff`` (see fd_passing)."""
        if proc.stdio is not None:
            stdio, proc.stdio = proc.stdio, None
            return stdio
        path = self._socket_path()
        token = f"f{next(self._ids)}"
        try:
            header, fds = await asyncio.to_thread(fetch_fds, path, token, proc.id, timeout)
        except (OSError, ValueError) as exc:
            raise AgentLostError(f"could not take the pipes of a process in {self.name}: {exc}") from exc
        return pipes_from(header, fds, self.name)

    async def spawn(self, req: CommandRequest, collect: bool = False) -> AgentProcess:
        """Start ``req``; with ``collect`` its output comes only with the result (``run``)."""
        proc_id = f"c{_PROC_ID_PREFIX}-{next(self._ids)}"
        proc = AgentProcess(self, proc_id, keep=req.keep_on_disconnect)
        self._procs[proc_id] = proc
        header = spawn_header(req, proc_id, collect)
        body = (req.script or "").encode("utf-8", "surrogateescape")
        try:
            if req.handoff and not self.pass_fds:
                header[wire.Spawn.HANDOFF] = False
                header[wire.Spawn.STDIO] = stdio_tokens(proc_id, req.stdin)
                _frame(header, body)  # refused before the agent keeps sockets for a spawn never sent
                proc.stdio, header[wire.Spawn.STDIO] = await self._open_stdio(proc_id, req.stdin)
            await self._send(header, body)
        except BaseException:
            self._procs.pop(proc_id, None)
            proc.close_stdio()
            raise
        return proc

    async def adopt(self, proc_id: str, pid: int | None) -> tuple[AgentProcess, HandedPipes]:
        """A kept process a previous daemon started (``proc_id``): its pipes again (what it wrote
        meanwhile waits in them), and its events on this connection from now on. BoxSandboxError
        when the agent has no such process any more."""
        proc = self._adopted(proc_id, pid)
        try:
            handed = await self.take_fds(proc)
            await self._send({wire.OP: wire.Op.ATTACH, wire.ID: proc_id})  # its exit, if it has one
        except BaseException:
            self._procs.pop(proc_id, None)
            raise
        return proc, handed

    async def attach(self, proc_id: str, pid: int | None) -> AgentProcess:
        """A kept process a previous daemon started, without its stdio (they cannot be taken
        again: the previous daemon's own sockets): its events, its exit, signals."""
        proc = self._adopted(proc_id, pid)
        try:
            await self._send({wire.OP: wire.Op.ATTACH, wire.ID: proc_id})
        except BaseException:
            self._procs.pop(proc_id, None)
            raise
        return proc

    def _adopted(self, proc_id: str, pid: int | None) -> AgentProcess:
        if proc_id in self._procs:
            raise BoxSandboxError(f"process {proc_id} in {self.name} is already adopted")
        proc = AgentProcess(self, proc_id, keep=True)
        proc._adopted(pid)
        self._procs[proc_id] = proc
        return proc

    async def _open_stdio(self, proc_id: str, stdin: bool) -> tuple[HandedPipes, list[str | None]]:
        """Sockets the agent will make process ``proc_id``'s stdio, and their tokens for the spawn."""
        try:
            return await asyncio.to_thread(open_stdio, self._socket_path(), proc_id, stdin, 10.0)
        except (OSError, ValueError) as exc:
            raise AgentLostError(f"could not open the stdio of a process in {self.name}: {exc}") from exc

    async def run(self, req: CommandRequest) -> CompletedCommand:
        """Run to completion, collecting (at most ``output_cap`` bytes of) each stream.

        The agent keeps the output and sends it with the exit, one frame per command.
        """
        proc = await self.spawn(req, collect=True)
        limit = None if req.timeout is None else req.timeout + REPORT_GRACE_SEC
        try:
            async with asyncio.timeout(limit):
                return await proc._completed
        except TimeoutError:
            raise BoxSandboxError(
                f"sandbox agent {self.name} did not report the end of a command "
                f"{REPORT_GRACE_SEC:g} s after its timeout"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(BoxSandboxError):
                proc.kill_soon()  # nobody wants the result any more: stop the command
            raise
