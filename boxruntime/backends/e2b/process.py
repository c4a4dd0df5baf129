"""A command in an E2B sandbox as the contract's ``Process``, over envd's ``process.Process``.

The e2b SDK's own RPC client is used (``e2b.envd.client_async.create_rpc_client`` with the
sandbox's connection config: its auth headers, codec and transport), below ``commands.run``:
that one decodes output to text and always runs ``bash -l -c``, and the contract needs bytes
exactly as written and argv run as given.

- ``Start``'s first event gives the pid; then ``data`` events (stdout, stderr, or a terminal's
  output, all passed on byte for byte), ``keepalive``, and one ``end``.
- The command's timeout is the call's ``Connect-Timeout-Ms``: envd kills the command then; the
  stream ends with ``deadline_exceeded`` and we SIGKILL it too (the client's timer may fire
  first). The end is then ``timeout``.
- An envd process outlives the stream that started it, so every process here is lasting: when
  the stream breaks and the sandbox is still there, the stream is taken up again by pid
  (``Connect``; output in between is lost, envd keeps an exit 30 s); when the sandbox is gone
  the events end with a ``BoxSandboxError``. A caller that goes away without the end must
  ``cancel()``, as the runtime does for commands that are not lasting.
- ``cancel()`` only records the request (it is called where nothing can be awaited): the kill
  is sent by the next ``events()`` step or by ``close()``, whichever comes first; the runtime
  always does one of the two next.
- envd sends SIGTERM and SIGKILL itself; any other signal is sent by ``kill`` run in the sandbox.
"""

from __future__ import annotations

import contextlib
import signal as signals
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.client_async import as_stream
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

from boxruntime.backends.contract import CommandExit, Output, ProcessEvent, TerminalSize
from boxruntime.errors import BoxSandboxError, BoxValidationError

KEEPALIVE_HEADERS = {"Keepalive-Ping-Interval": "50"}  # what the SDK asks envd for (seconds)
UNARY_TIMEOUT_MS = 30_000
RECONNECTS = 3
GONE_WAIT_SEC = 10.0
ENVD_SIGNALS = {signals.SIGTERM: process_pb.Signal.SIGTERM, signals.SIGKILL: process_pb.Signal.SIGKILL}
# Go's ProcessState.String() for a signalled process: "signal: killed" (strsignal, lower case).
SIGNAL_NAMES = {(signals.strsignal(s) or "").lower(): int(s) for s in signals.Signals}

Stream = AsyncGenerator[Any, Any]
HealthCheck = Callable[[], Awaitable[bool]]  # is the sandbox still there (raises: unreachable)
RunQuiet = Callable[[list[str]], Awaitable[None]]  # a short command in the sandbox, for signals


def selector(pid: int) -> process_pb.ProcessSelector:
    by_pid: Oneof[Literal["pid"], int] = Oneof("pid", pid)
    return process_pb.ProcessSelector(selector=by_pid)


def exit_of(end: Any, *, wall_ms: int, totals: tuple[int, int], cancelled: bool) -> CommandExit:
    """envd's end event as the contract's exit: an exit code, or -1 and "signal: NAME" (Go's
    ProcessState) for a signalled process, which we report as 128+N, as the agent does."""
    if end.exited:
        code: int | None = end.exit_code
        sig = None
        reason = "exit"
    else:
        name = end.status.removeprefix("signal: ").strip().lower()
        sig = SIGNAL_NAMES.get(name)
        code = 128 + sig if sig is not None else None
        reason = "cancelled" if cancelled else "signal"
    return CommandExit(code, sig, reason, wall_ms, None, None, totals[0], totals[1])


@dataclass
class Started:
    """A command envd has started: its pid, its event stream, when it started, its deadline."""

    pid: int
    stream: Stream
    started_at: float
    deadline: float | None  # monotonic


async def start(rpc: process_connect.ProcessClient, request: process_pb.StartRequest, timeout: float | None) -> Started:
    """Start ``request``; returns once envd said its pid. ConnectError when envd refused it."""
    started_at = time.monotonic()
    timeout_ms = max(1, round(timeout * 1000)) if timeout else None
    stream = as_stream(rpc.start(request, headers=KEEPALIVE_HEADERS, timeout_ms=timeout_ms))
    try:
        first = await stream.__anext__()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
    event = first.event.event if first.event is not None else None
    if not (isinstance(event, Oneof) and event.field == "start"):
        await stream.aclose()
        raise BoxSandboxError(f"envd did not start the command: its first event was {first}")
    deadline = started_at + timeout if timeout else None
    return Started(event.value.pid, stream, started_at, deadline)


class E2bProcess:
    def __init__(
        self,
        rpc: process_connect.ProcessClient,
        started: Started,
        *,
        terminal: bool,
        output_cap: int | None,
        alive: HealthCheck,
        run_quiet: RunQuiet,
        on_end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._rpc = rpc
        self._started = started
        self._stream: Stream | None = started.stream
        self._terminal = terminal
        self._cap = output_cap
        self._alive = alive
        self._run_quiet = run_quiet
        self._on_end = on_end
        self._totals = [0, 0]
        self._ended = False
        self._cancel_requested = False
        self._killed = False
        self._stdin = anyio.Lock()  # one write at a time: each is its own request

    @property
    def pid(self) -> int | None:
        return self._started.pid

    async def started(self) -> int:
        return self._started.pid

    # ── events ───────────────────────────────────────────────────────────

    async def events(self) -> AsyncIterator[ProcessEvent]:
        reconnects = 0
        while not self._ended:
            if self._cancel_requested and not self._killed:
                await self._kill()
            try:
                message = await self._next()
            except ConnectError as exc:
                if exc.code == Code.DEADLINE_EXCEEDED:
                    yield await self._timed_out()
                    return
                reconnects = await self._reconnect(exc, reconnects)
                continue
            event = message.event.event if message.event is not None else None
            if not isinstance(event, Oneof):
                continue
            if event.field == "data":
                output = self._output(event.value.output)
                if output is not None:
                    yield output
            elif event.field == "end":
                yield await self._end(exit_of(event.value, wall_ms=self._wall_ms(), totals=self._totals_now(),
                                              cancelled=self._cancel_requested))  # fmt: skip
                return

    async def _next(self) -> Any:
        if self._stream is None:
            raise ConnectError(Code.UNAVAILABLE, "no stream")
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            raise ConnectError(Code.UNAVAILABLE, "the stream ended without the command's end") from None

    def _output(self, output: Any) -> Output | None:
        if not isinstance(output, Oneof) or not output.value:
            return None
        stream = 2 if output.field == "stderr" else 1  # a terminal's output is stdout
        data: bytes = output.value
        before = self._totals[stream - 1]
        self._totals[stream - 1] += len(data)
        if self._cap is not None:
            data = data[: max(0, self._cap - before)]
        return Output(stream, data) if data else None

    def _totals_now(self) -> tuple[int, int]:
        return self._totals[0], self._totals[1]

    def _wall_ms(self) -> int:
        return int((time.monotonic() - self._started.started_at) * 1000)

    async def _end(self, exit: CommandExit) -> CommandExit:
        self._ended = True
        await self._drop_stream()
        if self._on_end is not None:
            await self._on_end()
        return exit

    async def _timed_out(self) -> CommandExit:
        # envd ends the command at the same deadline; the client's timer may have fired a moment
        # before the server's, so make sure it is gone before saying so.
        with anyio.CancelScope(shield=True):
            await self._send_kill()
        sig = int(signals.SIGKILL)
        exit = CommandExit(None, sig, "timeout", self._wall_ms(), None, None, *self._totals_now())
        return await self._end(exit)

    async def _reconnect(self, exc: ConnectError, attempts: int) -> int:
        """Take the stream up again by pid while the sandbox is there; BoxSandboxError when it
        is gone, or when the stream keeps breaking."""
        await self._drop_stream()
        try:
            alive = await self._alive()
        except Exception as probe:
            raise BoxSandboxError(
                f"lost the E2B sandbox while process {self.pid} ran: {exc.message}; {probe}"
            ) from None
        if not alive:
            raise BoxSandboxError(f"the E2B sandbox is gone (process {self.pid}: {exc.message})")
        if attempts >= RECONNECTS:
            raise BoxSandboxError(f"the stream of process {self.pid} keeps breaking: {exc.message}")
        await anyio.sleep(0.05 * 2**attempts)
        timeout_ms = None
        if self._started.deadline is not None:
            timeout_ms = max(1, round((self._started.deadline - time.monotonic()) * 1000))
        request = process_pb.ConnectRequest(process=selector(self._started.pid))
        self._stream = as_stream(self._rpc.connect(request, headers=KEEPALIVE_HEADERS, timeout_ms=timeout_ms))
        return attempts + 1  # its first event, "start", is skipped like any other

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            # A broken stream may fail to close; nothing is held any more then.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()

    # ── input, terminal, signals ─────────────────────────────────────────

    async def write(self, data: bytes, eof: bool = False) -> None:
        async with self._stdin:
            try:
                if data:
                    await self._send_input(data)
                if eof and self._terminal:
                    await self._send_input(b"\x04")  # the end of input on a terminal: Ctrl-D
                elif eof:
                    close = process_pb.CloseStdinRequest(process=selector(self._started.pid))
                    await self._rpc.close_stdin(close, timeout_ms=UNARY_TIMEOUT_MS)
            except ConnectError as exc:
                if exc.code in (Code.NOT_FOUND, Code.FAILED_PRECONDITION):
                    raise BrokenPipeError(f"process {self.pid} takes no more input: {exc.message}") from None
                raise BoxSandboxError(f"writing to process {self.pid}: {exc.message}") from None

    async def _send_input(self, data: bytes) -> None:
        if self._terminal:
            to_terminal: Oneof[Literal["pty"], bytes] = Oneof("pty", data)
            given = process_pb.ProcessInput(input=to_terminal)
        else:
            to_stdin: Oneof[Literal["stdin"], bytes] = Oneof("stdin", data)
            given = process_pb.ProcessInput(input=to_stdin)
        request = process_pb.SendInputRequest(process=selector(self._started.pid), input=given)
        await self._rpc.send_input(request, timeout_ms=UNARY_TIMEOUT_MS)

    async def resize(self, size: TerminalSize) -> None:
        if not self._terminal:
            raise BoxValidationError(f"process {self.pid} has no terminal")
        pty = process_pb.PTY(size=process_pb.PTY.Size(cols=size.cols, rows=size.rows))
        try:
            await self._rpc.update(
                process_pb.UpdateRequest(process=selector(self._started.pid), pty=pty), timeout_ms=UNARY_TIMEOUT_MS
            )
        except ConnectError as exc:
            raise BoxSandboxError(f"resizing the terminal of process {self.pid}: {exc.message}") from None

    async def signal(self, sig: int, *, until_gone: bool = False, cancel: bool = False) -> None:
        if self._ended:
            return
        if cancel:  # an end by this signal is then reported as cancelled (exit_of)
            self._cancel_requested = True
            self._killed = True  # the signal is the client's: events() must not send its own kill
        envd_signal = ENVD_SIGNALS.get(signals.Signals(sig))
        if envd_signal is not None:
            await self._send_signal(envd_signal)
        else:  # envd sends only SIGTERM and SIGKILL
            await self._run_quiet(["kill", "-s", signals.Signals(sig).name.removeprefix("SIG"), str(self.pid)])
        if until_gone:
            await self._wait_gone()

    async def _send_signal(self, envd_signal: process_pb.Signal) -> bool:
        request = process_pb.SendSignalRequest(process=selector(self._started.pid), signal=envd_signal)
        try:
            await self._rpc.send_signal(request, timeout_ms=UNARY_TIMEOUT_MS)
        except ConnectError as exc:
            if exc.code == Code.NOT_FOUND:
                return False  # already gone
            raise BoxSandboxError(f"signalling process {self.pid}: {exc.message}") from None
        return True

    async def _send_kill(self) -> None:
        with contextlib.suppress(BoxSandboxError):  # the sandbox is going: so is the process
            await self._send_signal(process_pb.Signal.SIGKILL)

    async def _kill(self) -> None:
        self._killed = True
        with anyio.CancelScope(shield=True):
            await self._send_kill()

    async def _wait_gone(self) -> None:
        """Until envd no longer lists the process (it is reaped), at most GONE_WAIT_SEC."""
        pause = 0.005
        with anyio.move_on_after(GONE_WAIT_SEC):
            while not self._ended:
                listed = await self._rpc.list(process_pb.ListRequest(), timeout_ms=UNARY_TIMEOUT_MS)
                if all(p.pid != self._started.pid for p in listed.processes):
                    return
                await anyio.sleep(pause)
                pause = min(0.1, pause * 2)

    def cancel(self) -> None:
        self._cancel_requested = True

    async def close(self) -> None:
        if self._cancel_requested and not self._killed and not self._ended:
            await self._kill()
        await self._drop_stream()
