"""envd's ``process.Process`` service over the runtime's commands (runtime/commands.py).

- ``Start`` runs the command as the sandbox user with envd's environment (``PATH``, ``HOME``,
  ``USER``, ``LOGNAME``, the sandbox's variables, then the call's), in the given directory
  (relative to home; it must exist). ``Connect-Timeout-Ms`` is the command's lifetime: the
  agent kills it then and the stream ends with ``deadline_exceeded``. Closing the stream does
  not stop the command (a background command is just a stream nobody reads any more).
- The stream sends ``start`` (the pid), output as raw bytes (``stdout``/``stderr``, base64),
  ``keepalive`` when idle, then ``end`` (exit code, or -1 and ``signal: killed``, as Go's
  ProcessState says it). If the sandbox goes away the connection breaks without an end, as
  E2B's does, so the SDK probes ``/health`` and raises ``SandboxNotRunningException``.
- ``Connect`` watches a running command (by pid or tag) from now on; ``List``, ``SendInput``,
  ``StreamInput``, ``CloseStdin``, ``SendSignal`` do what their names say.
- A PTY (``Start`` with ``pty``) is a terminal the agent opens; its output comes as ``pty``
  data, input goes to it (``SendInput`` ``pty``), ``Update`` resizes it.
"""

from __future__ import annotations

import base64
import signal
from typing import Any

import anyio
from aiohttp import web

from boxruntime.backends.contract import SANDBOX_PATH, CommandExit, Output
from boxruntime.edges.e2b.connect import (
    ConnectError,
    ServerStream,
    client_messages,
    envelope,
    read_single_envelope,
)
from boxruntime.edges.e2b.envd_calls import EnvdCall, connect_error
from boxruntime.edges.e2b.envd_messages import (
    SIGNALS,
    ProcessConfig,
    ProcessSelector,
    SelectorRequest,
    SendInputRequest,
    SendSignalRequest,
    StartRequest,
    StreamInputRequest,
    UpdateRequest,
)
from boxruntime.edges.e2b.parsing import parse
from boxruntime.edges.e2b.sandboxes import USER_HOME, USER_NAME
from boxruntime.edges.e2b.users import resolve
from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.runtime.commands import Command, CommandSpec, Event, Lost, Watcher

DEFAULT_PTY = (80, 24)
START_HOLD_SEC = 0.003


def command_env(sandbox_envs: dict[str, str], envs: dict[str, str]) -> dict[str, str]:
    """A command's environment as envd makes it: PATH, the user's HOME, USER and LOGNAME, the
    sandbox's variables, then the command's own."""
    return {"PATH": SANDBOX_PATH, "HOME": USER_HOME, "USER": USER_NAME, "LOGNAME": USER_NAME, **sandbox_envs, **envs}


def start_event(pid: int) -> dict[str, Any]:
    return {"event": {"start": {"pid": pid}}}


def data_event(output: Output, pty: bool = False) -> dict[str, Any]:
    name = "pty" if pty else "stdout" if output.stream == 1 else "stderr"
    return {"event": {"data": {name: base64.b64encode(output.data).decode("ascii")}}}


KEEPALIVE: dict[str, Any] = {"event": {"keepalive": {}}}


def end_event(exit: CommandExit) -> dict[str, Any]:
    """The end as envd reports it from Go's ProcessState: the exit code and "exit status N",
    or -1 and "signal: killed" for a command that a signal ended."""
    if exit.signal is not None:
        status = f"signal: {signal.strsignal(exit.signal) or exit.signal}".lower()
        end: dict[str, Any] = {"exitCode": -1, "exited": False, "status": status, "error": status}
    else:
        code = exit.code or 0
        status = f"exit status {code}"
        end = {"exitCode": code, "exited": True, "status": status}
        if code:
            end["error"] = status
    return {"event": {"end": end}}


class ProcessService:
    def unary(self) -> dict[str, Any]:
        return {
            "List": self.list_processes,
            "SendInput": self.send_input,
            "CloseStdin": self.close_stdin,
            "SendSignal": self.send_signal,
            "Update": self.update,
        }

    def streams(self) -> dict[str, Any]:
        return {"Start": self.start, "Connect": self.connect, "StreamInput": self.stream_input}

    # ── streams ──────────────────────────────────────────────────────────

    async def start(self, call: EnvdCall) -> web.StreamResponse:
        req = parse(StartRequest, await read_single_envelope(call.request))
        config = req.process
        pty = None
        if req.pty is not None:
            size = req.pty.size
            pty = (size.cols, size.rows) if size is not None and size.cols and size.rows else DEFAULT_PTY
        cwd = resolve(config.cwd) if config.cwd else USER_HOME
        spec = CommandSpec(
            argv=[config.cmd, *config.args],
            cwd=cwd,
            env=command_env(call.sandbox.env_vars, config.envs),
            stdin=req.stdin is not False,  # unset: on, as envd keeps it for older SDKs
            timeout=call.timeout,
            tag=req.tag,
            make_cwd=False,
            pty=pty,
        )
        try:
            command, watcher = await call.sandboxes.runtime.commands.start(call.session_id, spec)
        except BoxValidationError as exc:
            if "workdir" in str(exc):
                raise ConnectError("invalid_argument", f"cwd '{cwd}' does not exist") from None
            raise
        known = call.sandbox.processes
        for gone in set(known) - {c.pid for c in call.sandboxes.runtime.commands.commands(call.session_id)}:
            del known[gone]
        known[command.pid] = (config, req.tag)
        return await self._stream(call, command, watcher, kill_at_deadline=True)

    async def connect(self, call: EnvdCall) -> web.StreamResponse:
        req = parse(SelectorRequest, await read_single_envelope(call.request))
        command = self._select(call, req.process)
        return await self._stream(call, command, command.watch(), kill_at_deadline=False)

    async def _stream(
        self, call: EnvdCall, command: Command, watcher: Watcher, kill_at_deadline: bool
    ) -> web.StreamResponse:
        stream = ServerStream(call.request)
        try:
            await stream.open()
            # The start goes out with what follows if that comes within START_HOLD_SEC: a short
            # command's whole stream is then one write (on these machines each costs ~0.5 ms).
            stream.hold(start_event(command.pid))
            with anyio.move_on_after(call.timeout if call.timeout is not None else float("inf")) as deadline:
                await self._pass_on(call, stream, watcher, command.spec.pty is not None, kill_at_deadline)
            if deadline.cancelled_caught:
                # The agent ends the command itself at the same moment (its own timeout).
                message = "context deadline exceeded" if kill_at_deadline else "stream deadline exceeded"
                await stream.end(ConnectError("deadline_exceeded", message))
        except ConnectionError:
            pass  # the client went away; the command goes on
        finally:
            command.unwatch(watcher)
        return stream.response

    async def _pass_on(
        self, call: EnvdCall, stream: ServerStream, watcher: Watcher, pty: bool, own_deadline: bool
    ) -> None:
        """Events until the end. ``own_deadline``: the command's time limit is this call's
        (Start): when the agent ends it for that, the call ends as envd's does, past its
        deadline, whichever of the two timers fired first."""
        keepalive = call.keepalive_sec()
        while True:
            with anyio.move_on_after(START_HOLD_SEC if stream.held else keepalive) as idle:
                event: Event | None = await watcher.next()
            if idle.cancelled_caught:
                await (stream.write() if stream.held else stream.send(KEEPALIVE))
                continue
            chunk = bytearray()  # what is already waiting goes out in the same write
            while isinstance(event, Output):
                chunk += envelope(data_event(event, pty))
                event = watcher.next_nowait()
            if event is None:
                await stream.write(bytes(chunk))
            elif isinstance(event, CommandExit) and own_deadline and event.reason == "timeout":
                await stream.end(ConnectError("deadline_exceeded", "context deadline exceeded"), bytes(chunk))
                return
            elif isinstance(event, CommandExit):
                await stream.end(before=bytes(chunk + envelope(end_event(event))))
                return
            elif isinstance(event, Lost):
                await stream.write(bytes(chunk))
                stream.abort()  # as E2B's stream breaks when its sandbox dies
                return
            else:  # Overflowed
                await stream.end(ConnectError("resource_exhausted", "the client fell too far behind"), bytes(chunk))
                return

    async def stream_input(self, call: EnvdCall) -> web.StreamResponse:
        stream = ServerStream(call.request)
        await stream.open()
        error: ConnectError | None = None
        command: Command | None = None
        try:
            async for raw in client_messages(call.request):
                message = parse(StreamInputRequest, raw)
                if message.start is not None:
                    command = self._select(call, message.start.process)
                elif message.data is not None:
                    if command is None:
                        raise ConnectError("failed_precondition", "input before the start message")
                    await self._write_input(command, message.data.input.stdin, message.data.input.pty)
        except ConnectError as exc:
            error = exc
        except BoxError as exc:
            error = connect_error(exc)
        if error is None:
            await stream.send({})
        await stream.end(error)
        return stream.response

    # ── unary ────────────────────────────────────────────────────────────

    async def list_processes(self, call: EnvdCall, _body: dict[str, Any]) -> dict[str, Any]:
        running = [c for c in call.sandboxes.runtime.commands.commands(call.session_id) if c.running]
        known = call.sandbox.processes
        for pid in set(known) - {c.pid for c in running}:
            known.pop(pid, None)
        processes = []
        for command in running:
            config, tag = known.get(command.pid, (None, None))
            if config is None:
                config = ProcessConfig(cmd=command.spec.argv[0], args=command.spec.argv[1:], cwd=command.spec.cwd)
            info: dict[str, Any] = {"config": config.model_dump(by_alias=True, exclude_none=True), "pid": command.pid}
            if tag is not None:
                info["tag"] = tag
            processes.append(info)
        return {"processes": processes}

    async def send_input(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(SendInputRequest, body)
        await self._write_input(self._select(call, req.process), req.input.stdin, req.input.pty)
        return {}

    async def close_stdin(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        command = self._select(call, parse(SelectorRequest, body).process)
        if command.spec.pty is not None:
            raise ConnectError("failed_precondition", "cannot close stdin for PTY process — send Ctrl+D (0x04) instead")
        await command.close_stdin()
        return {}

    async def send_signal(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(SendSignalRequest, body)
        if req.signal not in SIGNALS:
            raise ConnectError("invalid_argument", "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")
        command = self._select(call, req.process)
        if not command.running:
            raise ConnectError("not_found", f"process with pid {command.pid} not found")
        await command.signal(SIGNALS[req.signal])
        return {}

    async def update(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(UpdateRequest, body)
        command = self._select(call, req.process)
        if req.pty is not None and req.pty.size is not None:
            await command.resize(req.pty.size.cols, req.pty.size.rows)
        return {}

    # ── helpers ──────────────────────────────────────────────────────────

    @staticmethod
    def _select(call: EnvdCall, selector: ProcessSelector) -> Command:
        commands = call.sandboxes.runtime.commands
        if selector.pid is not None:
            return commands.get(call.session_id, selector.pid)
        if selector.tag is not None:
            return commands.find_tag(call.session_id, selector.tag)
        raise ConnectError("invalid_argument", "a process selector needs a pid or a tag")

    @staticmethod
    async def _write_input(command: Command, stdin: bytes | None, pty: bytes | None) -> None:
        on_terminal = command.spec.pty is not None
        if pty is not None and not on_terminal:
            raise ConnectError("failed_precondition", f"process {command.pid} has no PTY; send input to its stdin")
        if stdin is not None and on_terminal:
            raise ConnectError("failed_precondition", f"process {command.pid} has a PTY; send input to the PTY")
        data = pty if on_terminal else stdin
        if data:
            await command.write_stdin(data)
