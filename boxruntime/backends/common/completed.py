"""A command that has already run, as the contract's ``Process``: for sandboxes that can only run
a command to its end (no streaming, no stdin), its output comes all at once, then its end."""

from __future__ import annotations

from collections.abc import AsyncIterator

from boxruntime.backends.contract import CompletedCommand, Output, ProcessEvent, TerminalSize
from boxruntime.errors import BoxValidationError


class RanToCompletion:
    def __init__(self, done: CompletedCommand) -> None:
        self._done = done

    @property
    def pid(self) -> int | None:
        return None

    async def started(self) -> int:
        return 0

    async def events(self) -> AsyncIterator[ProcessEvent]:
        for stream, data in ((1, self._done.stdout), (2, self._done.stderr)):
            if data:
                yield Output(stream, data)
        yield self._done.exit

    async def write(self, data: bytes, eof: bool = False) -> None:
        raise BoxValidationError("this command has no stdin: it has already run to its end")

    async def resize(self, size: TerminalSize) -> None:
        raise BoxValidationError("this command has no terminal")

    async def signal(self, sig: int, *, until_gone: bool = False, cancel: bool = False) -> None:
        return None  # it has ended

    def cancel(self) -> None:
        return None

    async def close(self) -> None:
        return None
