"""``exec -i`` and ``exec -t``: a command in a sandbox attached to this terminal.

``-i`` forwards stdin to the command (then EOF when stdin ends); ``-t`` runs it on a terminal
in the sandbox of this terminal's size, follows resizes (SIGWINCH) and, when stdin is a
terminal too, puts it in raw mode for the duration, so keys (^C, ^D, arrows) reach the
command as they would a local one. The terminal is restored however the command ends.

stdin is read by a thread (a blocking read is the one way that works the same for a terminal,
a pipe and a file) that polls every ``POLL_SEC`` for the end of the command, so the task that
owns it can wait for it to finish.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty as ttymode
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread

from boxruntime.errors import BoxError, BoxValidationError

if TYPE_CHECKING:
    from boxruntime.models import ExecResult
    from langbot_bridge.client import BoxClient
    from langbot_bridge.service import BoxService

POLL_SEC = 0.1
READ_SIZE = 65536
DEFAULT_SIZE = (24, 80)


def terminal_size() -> tuple[int, int]:
    """(rows, cols) of whichever of stdin, stdout, stderr is a terminal; 24x80 otherwise."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return DEFAULT_SIZE


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode until the block ends (a no-op when it is no terminal)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    ttymode.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_stdin(fd: int, stop: threading.Event, deliver: Any) -> None:
    """Runs in a worker thread: hand each chunk of ``fd`` (b"" at its end) to ``deliver``."""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], POLL_SEC)
        if not ready:
            continue
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        try:
            anyio.from_thread.run(deliver, data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
            return  # the command ended: nobody takes input any more
        if not data:
            return


async def forward_stdin(client: BoxClient, exec_id: str, fd: int = 0) -> None:
    """Send what arrives on ``fd`` to the command, then EOF; stop quietly once it takes no more."""
    send, receive = anyio.create_memory_object_stream[bytes](4)
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, _read_stdin, fd, stop, send.send)
        try:
            async with receive:
                async for data in receive:
                    try:
                        await client.exec_input(exec_id, data, eof=not data)
                    except BoxValidationError:
                        return  # it exited or closed its stdin
                    if not data:
                        return
        finally:
            stop.set()
            send.close()


async def forward_resizes(client: BoxClient, exec_id: str) -> None:
    """Tell the command's terminal each new size of ours."""
    with anyio.open_signal_receiver(signal.SIGWINCH) as resizes:
        async for _ in resizes:
            rows, cols = terminal_size()
            with contextlib.suppress(BoxError):
                await client.exec_resize(exec_id, rows, cols)


async def run_interactive(
    service: BoxService, session_id: str, command: str, request: dict[str, Any], *, stdin: bool, tty: bool
) -> ExecResult:
    """Run ``command`` with stdin forwarded and/or on a terminal; its result (output streamed)."""
    from boxruntime.models import ExecStarted, OutputChunk, StreamedResult, TerminalSize
    from langbot_bridge.client import chunk_bytes

    size = TerminalSize(rows=terminal_size()[0], cols=terminal_size()[1]) if tty else None
    interactive = service.interactive_request(
        session_id, command, request, stdin=stdin, tty=size, no_timeout="timeout_sec" not in request
    )
    client = service.client
    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    result: ExecResult | None = None
    async with contextlib.aclosing(client.exec_interactive(interactive)) as stream:
        started = await anext(stream, None)
        if not isinstance(started, ExecStarted):
            raise BoxError("the daemon did not start the interactive command")
        with raw_terminal(0) if tty and stdin else contextlib.nullcontext():
            async with anyio.create_task_group() as tg:
                if stdin:
                    tg.start_soon(forward_stdin, client, started.exec_id)
                if tty:
                    tg.start_soon(forward_resizes, client, started.exec_id)
                async for item in stream:
                    if isinstance(item, OutputChunk):
                        out = outputs[item.stream]
                        out.write(chunk_bytes(item))
                        out.flush()
                    elif isinstance(item, StreamedResult):
                        result = item.result
                        break
                tg.cancel_scope.cancel()
    if result is None:
        raise BoxError("the daemon ended the output stream without a result")
    return result
