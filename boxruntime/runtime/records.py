"""Session records: what a successor daemon needs to take this daemon's sessions over.

One small JSON file per session, ``<data>/records/<instance>/<key>.json``, written atomically (a
temporary file renamed over it; no fsync: it must survive the daemon, not the machine) when the
session is made, when its spec, deadline or managed processes change, its timestamps at each
reaper round, and everything (the unread output of its processes too) at a handover. Removed
with the session. Only sessions whose backend keeps sandboxes beyond the daemon have one.

A daemon that starts claims the records of dead instances (``claim_dead``): each file is
renamed into its own instance's directory, one atomic rename per record, so two successors
never both take one, and the claim is visible at once to every other daemon's orphan cleanup
(``claimed_sandboxes``: sandboxes named by a live instance's records are spared). Claims and
cleanups happen under the data dir's adoption lock (boxruntime.instance).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from boxruntime.instance import instance_alive
from boxruntime.models import ManagedProcessSpec

if TYPE_CHECKING:
    from boxruntime.runtime.sessions import Session

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SUFFIX = ".json"


class ProcessRecord(pydantic.BaseModel):
    """A managed process, as its successor finds it again."""

    process_id: str
    spec: ManagedProcessSpec
    ref: str  # the backend's reference to the lasting process (Backend.process_ref)
    pid: int | None = None
    started_at: dt.datetime
    stderr_preview: str = ""
    # Written at a handover only: stdout lines the daemon had read and nobody had received
    # yet, and the start of a line not finished (after a crash these are lost with the daemon;
    # what the process wrote after its last read waits in its pipe either way).
    replay: list[str] = pydantic.Field(default_factory=list)
    partial: str = ""


class SessionRecord(pydantic.BaseModel):
    version: int = RECORD_VERSION
    session_id: str
    key: str
    backend: str
    sandbox_id: str
    spec: dict[str, Any]  # BoxSpec, validated again by the successor (its rules may be newer)
    sandbox: dict[str, Any]  # Backend.describe
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime | None = None
    processes: list[ProcessRecord] = pydantic.Field(default_factory=list)


def session_record(session: Session, handover: bool = False) -> SessionRecord:
    processes = []
    for process in session.processes.values():
        kept = process.record(handover)
        if kept is not None:
            processes.append(kept)
    return SessionRecord(
        session_id=session.session_id,
        key=session.handle.key,
        backend=session.backend.name,
        sandbox_id=session.handle.sandbox_id,
        spec=session.spec.model_dump(mode="json"),
        sandbox=session.backend.describe(session.handle),
        created_at=session.created_at,
        last_used_at=session.last_used_at,
        expires_at=session.expires_at,
        processes=processes,
    )


def records_root(data_dir: Path) -> Path:
    return data_dir / "records"


class RecordBook:
    """The records of one daemon instance, and its claims on those of dead ones."""

    def __init__(self, data_dir: Path, instance_id: str) -> None:
        self.data_dir = data_dir
        self.instance_id = instance_id
        self.root = records_root(data_dir)
        self.directory = self.root / instance_id

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def save(self, record: SessionRecord) -> None:
        """Write ``record`` atomically; a failure is logged (the session goes on without it)."""
        path = self._path(record.key)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(record.model_dump_json())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("session %s: could not write its record: %s", record.session_id, exc)

    def remove(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the record of session key %s: %s", key, exc)

    def load(self, key: str) -> SessionRecord | None:
        try:
            return SessionRecord.model_validate_json(self._path(key).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("session key %s: unreadable record dropped: %s", key, exc)
            self.remove(key)
            return None

    def claim_dead(self) -> list[SessionRecord]:
        """Move every record of a dead instance under this one; the records claimed. Call
        under the adoption lock, holding this instance's own lock."""
        claimed: list[SessionRecord] = []
        for directory in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            owner = directory.name
            if owner == self.instance_id or not directory.is_dir():
                continue
            if instance_alive(self.data_dir, owner):
                continue  # a live daemon's: never touched
            for source in sorted(directory.glob(f"*{SUFFIX}")):
                key = source.name[: -len(SUFFIX)]
                target = self._path(key)
                if target.exists():
                    continue  # a session of that key is ours already; the other is an orphan
                self.directory.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(source, target)
                except FileNotFoundError:
                    continue  # another successor claimed it first
                record = self.load(key)
                if record is not None:
                    claimed.append(record)
            for leftover in directory.iterdir():
                leftover.unlink(missing_ok=True)  # unfinished temporary files
            with contextlib.suppress(OSError):
                directory.rmdir()
        return claimed

    def drop_dead(self) -> None:
        """Remove dead instances' records unclaimed (re-adoption off: their sandboxes are
        removed as orphans)."""
        for directory in self.root.iterdir() if self.root.is_dir() else []:
            owner = directory.name
            if owner == self.instance_id or not directory.is_dir() or instance_alive(self.data_dir, owner):
                continue
            for leftover in directory.iterdir():
                leftover.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()

    def claimed_sandboxes(self) -> set[str]:
        """Ids of the sandboxes that live daemons' records name (this one's included): orphan
        cleanup must spare them."""
        names: set[str] = set()
        for directory in self.root.iterdir() if self.root.is_dir() else []:
            owner = directory.name
            if owner != self.instance_id and not instance_alive(self.data_dir, owner):
                continue
            for path in directory.glob(f"*{SUFFIX}"):
                try:
                    record = SessionRecord.model_validate_json(path.read_bytes())
                except (OSError, ValueError):
                    continue
                names.add(record.sandbox_id)
        return names
