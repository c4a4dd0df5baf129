"""Interactive exec payloads (ours): a command that takes input, optionally on a terminal.

``box_exec_interactive`` streams like ``box_exec_stream`` but starts with ``ExecStarted``,
whose ``exec_id`` names the command for ``box_exec_input`` (stdin data, then ``eof``),
``box_exec_resize`` (a terminal's size) and ``box_exec_signal`` on the same connection. The command ends when it
exits, on its timeout, or when its stream is cancelled or its connection closes.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from boxruntime.models.base import Model, Request
from boxruntime.models.box import BoxSpec

MAX_TERMINAL_SIDE = 10_000
MAX_EXEC_ID_CHARS = 64  # the daemon's ids are 16 hex digits
# One box_exec_input: base64 of at most 8 MiB (a WebSocket message holds 16 MiB).
MAX_INPUT_CHARS = (8 << 20) // 3 * 4


class TerminalSize(Request):
    """A terminal's size in character cells."""

    rows: int = pydantic.Field(ge=1, le=MAX_TERMINAL_SIDE)
    cols: int = pydantic.Field(ge=1, le=MAX_TERMINAL_SIDE)


class InteractiveExecRequest(BoxSpec):
    """``box_exec_interactive``: a ``BoxSpec`` and how the command is attached.

    ``stdin``: the command reads what ``box_exec_input`` sends (else /dev/null). ``tty``: it runs
    on a new terminal of that size (its stdout and stderr are the terminal's output, sent as
    stdout). ``no_timeout``: ``timeout_sec`` does not apply; the command runs until it exits or
    the client cancels it (an interactive shell).
    """

    stdin: bool = True
    tty: TerminalSize | None = None
    no_timeout: bool = False


class ExecStarted(Model):
    """The first message of ``box_exec_interactive``: the command is running."""

    kind: Literal["started"] = "started"
    exec_id: str


class _ExecRef(Request):
    exec_id: str = pydantic.Field(max_length=MAX_EXEC_ID_CHARS)


class ExecInputRequest(_ExecRef):
    """``box_exec_input``: bytes for the command's stdin (base64), and whether they are the last.

    Answered once the command has taken them, so a client sending one request at a time never
    has more in flight than the command reads."""

    data: str = pydantic.Field(default="", max_length=MAX_INPUT_CHARS)
    eof: bool = False


class ExecSignalRequest(_ExecRef):
    """``box_exec_signal``: send a signal to the command's process group and session (default
    SIGKILL). Its stream then ends with its result, as for any other end."""

    signal: int = pydantic.Field(default=9, ge=1, le=64)


class ExecResizeRequest(TerminalSize):
    """``box_exec_resize``: the new size of the command's terminal."""

    exec_id: str = pydantic.Field(max_length=MAX_EXEC_ID_CHARS)
