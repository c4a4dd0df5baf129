"""Interactive exec payloads (ours): a command that takes input, optionally on a terminal.

``box_exec_interactive`` streams like ``box_exec_stream`` but starts with ``ExecStarted``,
whose ``exec_id`` names the command for ``box_exec_input`` (stdin data, then ``eof``),
``box_exec_resize`` (a terminal's size) and ``box_exec_signal`` on the same connection. The command ends when it
exits, on its timeout, or when its stream is cancelled or its connection closes.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from boxruntime.models.base import Model
from boxruntime.models.box import BoxSpec

MAX_TERMINAL_SIDE = 10_000


class TerminalSize(Model):
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


class ExecInputRequest(Model):
    """``box_exec_input``: bytes for the command's stdin (base64), and whether they are the last.

    Answered once the command has taken them, so a client sending one request at a time never
    has more in flight than the command reads."""

    exec_id: str
    data: str = ""
    eof: bool = False


class ExecSignalRequest(Model):
    """``box_exec_signal``: send a signal to the command's process group and session (default
    SIGKILL). Its stream then ends with its result, as for any other end."""

    exec_id: str
    signal: int = pydantic.Field(default=9, ge=1, le=64)


class ExecResizeRequest(TerminalSize):
    """``box_exec_resize``: the new size of the command's terminal."""

    exec_id: str
