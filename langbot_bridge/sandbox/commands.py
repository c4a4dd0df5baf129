"""``sbx.commands``: run commands in the sandbox, in the foreground or in the background.

Output is the command's own, byte for byte (decoded as UTF-8): what ``box_exec`` returns for
LangBot (stripped, clipped at 1 MiB) is not used here. ``on_stdout``/``on_stderr`` receive it
as it is written; a non-zero exit is a result, not an exception, unless ``check=True``.
"""

from __future__ import annotations

import codecs
import contextlib
import inspect
import shlex
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio

from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.models import EndReason, ExecResult, ExecStarted, ExecStatus, OutputChunk, StreamedResult
from langbot_bridge.client import chunk_bytes

if TYPE_CHECKING:
    from langbot_bridge.sandbox.sandbox import Sandbox

OutputCallback = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended and what it wrote."""

    stdout: str
    stderr: str
    exit_code: int | None  # None when it timed out
    timed_out: bool
    duration_ms: int
    end_reason: EndReason
    signal: int | None = None

    @property
    def ok(self) -> bool:
        """It exited with status 0 (and did not time out)."""
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> CommandResult:
        """This result; CommandExitError unless ``ok``."""
        if not self.ok:
            raise CommandExitError(self)
        return self


class CommandExitError(BoxError):
    """A command checked with ``check=True`` (or ``CommandResult.check()``) did not succeed."""

    def __init__(self, result: CommandResult) -> None:
        how = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        detail = result.stderr.strip()[-500:]
        super().__init__(f"command {how}" + (f": {detail}" if detail else ""))
        self.result = result


def _result(done: ExecResult, stdout: bytes, stderr: bytes) -> CommandResult:
    timed_out = done.status == ExecStatus.TIMED_OUT
    return CommandResult(
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace") or (done.stderr if timed_out else ""),
        exit_code=done.exit_code,
        timed_out=timed_out,
        duration_ms=done.duration_ms,
        end_reason=done.end_reason,
        signal=done.signal,
    )


class _Output:
    """Collects a command's output and hands it, decoded, to the caller's callbacks."""

    def __init__(self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> None:
        self.data = {"stdout": bytearray(), "stderr": bytearray()}
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.data}

    async def feed(self, chunk: OutputChunk) -> None:
        raw = chunk_bytes(chunk)
        self.data[chunk.stream] += raw
        callback = self._callbacks[chunk.stream]
        if callback is not None:
            text = self._decoders[chunk.stream].decode(raw)
            if text:
                outcome = callback(text)
                if inspect.isawaitable(outcome):
                    await outcome

    def result(self, done: ExecResult) -> CommandResult:
        return _result(done, bytes(self.data["stdout"]), bytes(self.data["stderr"]))


def _command_text(cmd: str | Sequence[str]) -> str:
    text = cmd if isinstance(cmd, str) else shlex.join(cmd)
    if not text.strip():
        raise BoxValidationError("the command is empty")
    return text


class CommandHandle:
    """A command running in the background (``commands.run(..., background=True)``)."""

    def __init__(self, sandbox: Sandbox, command: str, output: _Output) -> None:
        self._sandbox = sandbox
        self.command = command
        self._output = output
        self._exec_id: str | None = None
        self._started = anyio.Event()
        self._done = anyio.Event()
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self._scope = anyio.CancelScope()

    @property
    def stdout(self) -> str:
        """What it wrote to stdout so far."""
        return bytes(self._output.data["stdout"]).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """What it wrote to stderr so far."""
        return bytes(self._output.data["stderr"]).decode("utf-8", "replace")

    @property
    def finished(self) -> bool:
        """It has ended (or failed to start)."""
        return self._done.is_set()

    async def wait(self, *, check: bool = False) -> CommandResult:
        """Its result once it has ended; the error instead if it could not run to its end."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result.check() if check else self._result

    async def send_stdin(self, data: str | bytes) -> None:
        """Write to its stdin (``str`` as UTF-8); returns once the command has taken it."""
        await self._sandbox.service.client.exec_input(await self._id(), _raw(data))

    async def close_stdin(self) -> None:
        """End its stdin (it reads EOF)."""
        await self._sandbox.service.client.exec_input(await self._id(), b"", eof=True)

    async def kill(self) -> CommandResult | None:
        """Kill it (SIGKILL to its process group and session) and wait until it is gone; its
        result (killed by signal 9), or None if it never got that far."""
        if not self._done.is_set() and self._exec_id is not None:
            try:
                await self._sandbox.service.client.exec_signal(self._exec_id, signal.SIGKILL)
            except BoxError:
                self._scope.cancel()  # gone or unreachable: stop reading, which cancels it too
        else:
            self._scope.cancel()
        await self._done.wait()
        return self._result

    async def _id(self) -> str:
        with anyio.move_on_after(60):
            await self._started.wait()
        if self._exec_id is None or self._done.is_set():
            raise BoxValidationError(f"command {self.command!r} is not running")
        return self._exec_id

    async def _run(self, stream: AsyncGenerator[ExecStarted | OutputChunk | StreamedResult, None]) -> None:
        """The task that reads it (owned by the sandbox); errors end up on ``wait()``."""
        try:
            with self._scope:
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        if isinstance(item, ExecStarted):
                            self._exec_id = item.exec_id
                            self._started.set()
                        elif isinstance(item, OutputChunk):
                            await self._output.feed(item)
                        else:
                            self._result = self._output.result(item.result)
            if self._result is None:
                self._error = BoxError(f"command {self.command!r} was killed before it ended")
        except Exception as exc:
            self._error = exc
        finally:
            self._started.set()
            self._done.set()


def _raw(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class Commands:
    """Commands in one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        stdin: str | bytes | None = ...,
        check: bool = ...,
        background: Literal[False] = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        stdin: str | bytes | None = ...,
        check: bool = ...,
        background: Literal[True],
    ) -> CommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str | bytes | None = None,
        check: bool = False,
        background: bool = False,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` (a shell command, or an argv list) in the sandbox.

        ``timeout`` in seconds (default: the profile's; a background command has none unless
        given), refused when above the profile's limit. ``env`` and ``cwd`` add to or replace
        the sandbox's defaults. ``stdin`` is fed to the command, then EOF. ``background=True``
        returns a ``CommandHandle`` at once (``wait``, ``send_stdin``, ``kill``); otherwise the
        ``CommandResult`` once it ends, raising ``CommandExitError`` on failure with ``check``.
        """
        command = _command_text(cmd)
        request = self._sandbox.command_request(timeout=timeout, env=env, cwd=cwd)
        output = _Output(on_stdout, on_stderr)
        if background:
            return await self._start(command, request, output, no_timeout=timeout is None)
        if stdin is not None:
            handle = await self._start(command, request, output, no_timeout=False)
            try:
                await handle.send_stdin(stdin)
                await handle.close_stdin()
            except BoxValidationError:
                pass  # it ended without reading all of it, as `true < file` does
            result = await handle.wait()
        else:
            result = await self._foreground(command, request, output)
        return result.check() if check else result

    async def _foreground(self, command: str, request: dict[str, Any], output: _Output) -> CommandResult:
        sandbox = self._sandbox
        done: ExecResult | None = None
        stream = sandbox.service.exec_stream(sandbox.sandbox_id, command, request, actor="sdk")
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, StreamedResult):
                    done = item.result
                else:
                    await output.feed(item)
        if done is None:
            raise BoxError("the daemon ended the output stream without a result")
        return output.result(done)

    async def _start(
        self, command: str, request: dict[str, Any], output: _Output, *, no_timeout: bool
    ) -> CommandHandle:
        sandbox = self._sandbox
        interactive = sandbox.service.interactive_request(
            sandbox.sandbox_id, command, request, stdin=True, no_timeout=no_timeout
        )
        handle = CommandHandle(sandbox, command, output)
        sandbox.host.task_group.start_soon(handle._run, sandbox.service.client.exec_interactive(interactive))
        await handle._started.wait()
        if handle._error is not None and handle._exec_id is None:
            raise handle._error  # it never started: say why here, not only on wait()
        return handle
