"""The audit log: one JSON line per thing done in a sandbox on someone's behalf.

Every exec, managed-process start/stop and skill change is appended with the time, the chat it
came from, the session, the command, how it ended and who asked. The file is rotated by size
(``audit.log`` -> ``audit.log.1`` -> ... -> ``audit.log.<backups>``, the oldest dropped), so it
never grows without bound.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path
from typing import Literal

import anyio
import pydantic

from boxruntime.models import utcnow

AuditEvent = Literal["exec", "process_start", "process_stop", "skill_change"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5


class AuditEntry(pydantic.BaseModel):
    """One audited event: an exec, a managed process started or stopped, a skill changed."""

    time: dt.datetime = pydantic.Field(default_factory=utcnow)
    event: AuditEvent
    actor: str  # who asked: "tool:exec", "cli", a user id ...
    chat: dict[str, str] = pydantic.Field(default_factory=dict)
    session_id: str | None = None  # None for a skill change: skills live outside sessions
    process_id: str | None = None  # for process_start / process_stop
    skill: str | None = None  # for skill_change: the skill's name, when known
    digest: str | None = None  # for skill_change: the package's content digest after the change
    command: str | None = None  # what ran, or for skill_change what changed ("install demo.zip")
    status: str | None = None  # "completed", "timed_out", "error" ...
    exit_code: int | None = None
    duration_ms: int | None = None
    error: str | None = None


class AuditLog:
    """An append-only JSON-lines file of ``AuditEntry``s, rotated by size (``backups`` kept)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes < 1 or backups < 1:
            raise ValueError("the audit log needs max_bytes >= 1 and backups >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        # Appends run in worker threads; one writer at a time keeps lines whole and rotation sane.
        self._lock = threading.Lock()

    async def record(self, entry: AuditEntry) -> None:
        """Append ``entry`` as one line (in a worker thread: file I/O never blocks the loop)."""
        line = entry.model_dump_json() + "\n"
        await anyio.to_thread.run_sync(self._append, line.encode("utf-8"))

    def _append(self, line: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        for index in range(self.backups, 0, -1):
            source = self.path if index == 1 else self._backup(index - 1)
            if source.exists():
                os.replace(source, self._backup(index))

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")
