"""Interactive exec: ``box_exec_interactive``, ``_input``, ``_resize``, ``_signal`` (ours).

A command that takes input, optionally on a terminal: what ``boxruntime exec -i`` and ``-t``
use. Payloads are ``boxruntime.models.interactive``. The command is started by the session's
backend like any streamed exec; its output streams as ``box_exec_stream``'s does (after an ``ExecStarted`` that
names it) and its result comes last, without the output (already streamed).

Input and resizes reach only the commands started on the same connection: the registry belongs
to one connection's action table, and an exec id means nothing anywhere else.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncGenerator
from typing import Literal

import anyio

from boxruntime.action_table import ActionTable
from boxruntime.backends.contract import Command, CommandExit, Output, Process, SandboxFileError, TerminalSize
from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.models import (
    BoxSpec,
    Empty,
    EndReason,
    ExecInputRequest,
    ExecResizeRequest,
    ExecResult,
    ExecSignalRequest,
    ExecStarted,
    ExecStatus,
    InputWritten,
    InteractiveExecRequest,
    OutputChunk,
    StreamedResult,
)
from boxruntime.models import actions as a
from boxruntime.runtime.chunks import ChunkText
from boxruntime.runtime.core import BoxRuntime

_SPEC_FIELDS = set(BoxSpec.model_fields)


def command_for(req: InteractiveExecRequest) -> Command:
    """The command with a stdin, or on a terminal; output uncapped (it is streamed, never kept)."""
    return Command(
        cwd=req.workdir,
        env=req.env,
        script=req.cmd,
        timeout=None if req.no_timeout else float(req.timeout_sec),
        stdin=req.stdin and req.tty is None,
        terminal=TerminalSize(rows=req.tty.rows, cols=req.tty.cols) if req.tty is not None else None,
    )


def interactive_result(session_id: str, backend: str, exit: CommandExit, timeout_sec: int) -> ExecResult:
    reason = EndReason(exit.reason)
    timed_out = reason == EndReason.TIMEOUT
    return ExecResult(
        session_id=session_id,
        backend_name=backend,
        status=ExecStatus.TIMED_OUT if timed_out else ExecStatus.COMPLETED,
        exit_code=None if timed_out else exit.code,
        stderr=f"Command timed out after {timeout_sec} seconds." if timed_out else "",
        duration_ms=exit.wall_ms,
        end_reason=reason,
        signal=exit.signal,
        cpu_ms=exit.cpu_ms,
        peak_rss_kb=exit.peak_rss_kb,
        stdout_bytes=exit.stdout_total,
        stderr_bytes=exit.stderr_total,
    )


class InteractiveExecs:
    """The interactive commands of one control connection."""

    def __init__(self, runtime: BoxRuntime) -> None:
        self.runtime = runtime
        self._running: dict[str, tuple[Process, InteractiveExecRequest]] = {}

    def table(self) -> ActionTable:
        table = ActionTable()
        table.streamed(a.EXEC_INTERACTIVE, self.run)
        table.unary(a.EXEC_INPUT, self.input)
        table.unary(a.EXEC_RESIZE, self.resize)
        table.unary(a.EXEC_SIGNAL, self.signal)
        return table

    def _find(self, exec_id: str) -> tuple[Process, InteractiveExecRequest]:
        found = self._running.get(exec_id)
        if found is None:
            raise BoxValidationError(f"no running interactive exec {exec_id!r} on this connection")
        return found

    async def run(
        self, req: InteractiveExecRequest
    ) -> AsyncGenerator[ExecStarted | OutputChunk | StreamedResult, None]:
        if not req.cmd:
            raise BoxValidationError("cmd must not be empty")
        spec = BoxSpec.model_validate(req.model_dump(include=_SPEC_FIELDS))
        async with self.runtime.sessions.lease(spec) as session:
            proc = await session.backend.start_command(session.handle, command_for(req))
            exec_id = secrets.token_hex(8)
            self._running[exec_id] = (proc, req)
            finished = False
            try:
                yield ExecStarted(exec_id=exec_id)
                decoders = {1: ChunkText(), 2: ChunkText()}
                async for event in proc.events():
                    if isinstance(event, Output):
                        text, encoding = decoders[event.stream].convert(event.data)
                        name: Literal["stdout", "stderr"] = "stdout" if event.stream == 1 else "stderr"
                        yield OutputChunk(stream=name, data=text, encoding=encoding)
                    elif isinstance(event, CommandExit):
                        finished = True
                        result = interactive_result(spec.session_id, session.handle.backend, event, spec.timeout_sec)
                        yield StreamedResult(result=result)
            finally:
                self._running.pop(exec_id, None)
                if not finished:  # cancelled, or the client went away: the command goes too
                    proc.cancel()
                with anyio.CancelScope(shield=True):
                    await proc.close()

    async def input(self, req: ExecInputRequest) -> InputWritten:
        proc, started = self._find(req.exec_id)
        if not started.stdin:
            raise BoxValidationError(f"interactive exec {req.exec_id} was started without stdin")
        try:
            raw = base64.b64decode(req.data, validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise BoxValidationError("box_exec_input data must be base64") from None
        try:
            await proc.write(raw, req.eof)
        except (SandboxFileError, BrokenPipeError, ConnectionResetError):
            raise BoxValidationError(
                f"interactive exec {req.exec_id} takes no more input (it has exited or closed its stdin)"
            ) from None
        return InputWritten(written=len(raw))

    async def resize(self, req: ExecResizeRequest) -> Empty:
        proc, started = self._find(req.exec_id)
        if started.tty is None:
            raise BoxValidationError(f"interactive exec {req.exec_id} has no terminal to resize")
        try:
            await proc.resize(TerminalSize(rows=req.rows, cols=req.cols))
        except (SandboxFileError, OSError) as exc:
            raise BoxValidationError(f"interactive exec {req.exec_id}: {exc}") from None
        return Empty()

    async def signal(self, req: ExecSignalRequest) -> Empty:
        proc, _ = self._find(req.exec_id)
        with contextlib.suppress(BoxSandboxError):
            await proc.signal(req.signal, cancel=True)  # the client ends it: its exit says so
        return Empty()
