"""The session registry: get-or-create with the compatibility check, per-id locks, the TTL
reaper, capacity, delete and shutdown (reference §D.3, without the anchor's defects).

- One lock per session id serialises create/delete/reuse of that id; different ids never wait
  for each other and no lock is held across another id's backend call (seed S7).
- An exec timeout kills the command, never the session (§G.8).
- ``max_sessions`` counts live sessions plus creations in flight (seed S3).
- A session may have a deadline (E2B's sandbox timeout): it is removed then, busy or not, and
  is not reaped as idle before.
- Where the backend's sandboxes outlive the daemon, each session has a record in the data dir
  (runtime/records.py) that a successor takes it over from (runtime/readopt.py).
- A frozen session (runtime/suspend.py) is thawed by the next lease before anything reaches
  its sandbox, and before it is removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from boxruntime.backends.contract import Backend, SandboxHandle
from boxruntime.errors import (
    BoxCapacityExceededError,
    BoxSessionConflictError,
    BoxSessionNotFoundError,
)
from boxruntime.ids import safe_key
from boxruntime.models import SESSION_IDENTITY_FIELDS, BoxSpec, SessionInfo, SessionStatus, utcnow
from boxruntime.runtime.records import RecordBook, session_record

if TYPE_CHECKING:
    from boxruntime.runtime.processes import ManagedProcess

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    spec: BoxSpec  # the spec it was created with: the identity later requests must match
    backend: Backend[Any]
    handle: SandboxHandle
    created_at: dt.datetime = field(default_factory=utcnow)
    last_used_at: dt.datetime = field(default_factory=utcnow)
    active: int = 0  # execs and other leases in progress; a leased session is never reaped
    closing: bool = False
    keepalive: list[Callable[[], bool]] = field(default_factory=list)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    expires_at: dt.datetime | None = None  # removed at this moment whatever its use
    suspended: bool = False  # frozen (runtime/suspend.py): thawed before anything reaches it
    saved_used_at: dt.datetime | None = None  # last_used_at as its record last said

    @property
    def session_id(self) -> str:
        return self.spec.session_id

    def touch(self) -> None:
        self.last_used_at = utcnow()

    def busy(self) -> bool:
        """In use: an exec or lease in progress, a running managed process, or a keepalive."""
        return (
            self.active > 0
            or any(p.running for p in self.processes.values())
            or any(check() for check in self.keepalive)
        )

    def info(self) -> SessionInfo:
        spec = self.spec
        status = (
            SessionStatus.CLOSING if self.closing else (SessionStatus.RUNNING if self.active else SessionStatus.IDLE)
        )
        return SessionInfo(
            session_id=spec.session_id,
            backend_name=self.handle.backend,
            backend_session_id=self.handle.sandbox_id,
            image=spec.image,
            network=spec.network,
            host_path=spec.host_path,
            host_path_mode=spec.host_path_mode,
            mount_path=spec.mount_path,
            persistent=spec.persistent,
            cpus=spec.cpus,
            memory_mb=spec.memory_mb,
            pids_limit=spec.pids_limit,
            read_only_rootfs=spec.read_only_rootfs,
            workspace_quota_mb=spec.workspace_quota_mb,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            status=status,
            extra_mounts=spec.active_extra_mounts(),
            resolved_image=self.handle.resolved_image,
            workspace_quota_enforced=self.handle.workspace_quota_enforced,
            notes=list(self.handle.notes),
            expires_at=self.expires_at,
            suspended=self.suspended,
        )


def _mount_set(spec: BoxSpec) -> set[tuple[str, str, str]]:
    return {(m.host_path, m.mount_path, m.mode.value) for m in spec.active_extra_mounts()}


def _conflict(existing: BoxSpec, requested: BoxSpec) -> str | None:
    for name in SESSION_IDENTITY_FIELDS:
        if getattr(existing, name) != getattr(requested, name):
            value: Any = getattr(existing, name)
            shown = value.value if hasattr(value, "value") else value
            return f"{name}={shown}"
    return None


@contextlib.contextmanager
def _in_use(session: Session) -> Iterator[Session]:
    session.active += 1
    try:
        yield session
    finally:
        session.active -= 1
        session.touch()


class _IdLocks:
    """A lock per id, dropped again when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    def held(self, key: str) -> bool:
        """Someone holds or waits for the lock of ``key``."""
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


BackendProvider = Callable[[], Awaitable[Backend[Any]]]


class SandboxPool(Protocol):
    async def take(self, backend: Backend[Any], spec: BoxSpec, key: str) -> SandboxHandle | None: ...


class SessionManager:
    def __init__(
        self,
        backend: BackendProvider,
        max_sessions: Callable[[], int],
        ttl_sec: Callable[[], int],
        pool: SandboxPool | None = None,
        records: RecordBook | None = None,
    ) -> None:
        self._backend = backend
        self._pool = pool
        self.records = records
        self._max_sessions = max_sessions
        self._ttl_sec = ttl_sec
        self._sessions: dict[str, Session] = {}
        self._locks = _IdLocks()
        self._creating = 0
        self._closing = 0  # removals still tearing their sandbox down count against capacity
        self._deadline_changed = anyio.Event()
        self.on_remove: list[Callable[[Session], Awaitable[None]]] = []
        self.on_create: list[Callable[[Session, bool], None]] = []  # (session, from the warm pool)

    # ── queries ──────────────────────────────────────────────────────────

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def creating(self) -> int:
        return self._creating

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def find(self, session_id: str) -> Session | None:
        """The registered session of that id (closing or not), or None."""
        return self._sessions.get(session_id)

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.closing:
            raise BoxSessionNotFoundError(f"session {session_id} not found")
        return session

    # ── create / reuse ───────────────────────────────────────────────────

    async def get_or_create(self, spec: BoxSpec) -> Session:
        ready = self._ready_session(spec)
        if ready is not None:
            return ready
        async with self._locks.hold(spec.session_id):
            session = self._sessions.get(spec.session_id)
            if session is not None:
                conflict = _conflict(session.spec, spec)
                if conflict is not None:
                    raise BoxSessionConflictError(f"Box session {spec.session_id} already exists with {conflict}")
                # A reused session must never silently lack mounts the request asked for.
                if _mount_set(session.spec) != _mount_set(spec):
                    await self._thaw(session)
                    session.spec = await session.backend.extend_mounts(session.handle, session.spec, spec)
                    self.save(session)
                await self._thaw(session)
                if await session.backend.alive(session.handle):
                    session.touch()
                    return session
                log.warning("session %s: sandbox is gone, recreating it", spec.session_id)
                await self._remove(session, keep_workspace=True)
            return await self._create(spec)

    def _ready_session(self, spec: BoxSpec) -> Session | None:
        """The common case of every exec, decided without waiting: the session exists, nobody is
        creating, changing or removing it (no one holds its lock), the request matches it and
        its sandbox is known to be alive. Nothing is awaited from this check to the caller's
        lease, so nothing can change in between; anything else takes the locked path."""
        session = self._sessions.get(spec.session_id)
        if (
            session is None
            or session.closing
            or self._locks.held(spec.session_id)
            or _conflict(session.spec, spec) is not None
            or _mount_set(session.spec) != _mount_set(spec)
            or session.suspended
            or not session.backend.known_alive(session.handle)
        ):
            return None
        session.touch()
        return session

    async def _create(self, spec: BoxSpec) -> Session:
        limit = self._max_sessions()
        if len(self._sessions) + self._creating + self._closing >= limit:
            raise BoxCapacityExceededError(f"Box session capacity reached ({limit})")
        self._creating += 1
        try:
            backend = await self._backend()
            backend.check_spec(spec)  # before the pool: a pooled sandbox must not hide a refusal
            key = safe_key(spec.session_id)
            handle = await self._pool.take(backend, spec, key) if self._pool is not None else None
            pooled = handle is not None
            if handle is None:
                handle = await backend.start(spec, key)
        finally:
            self._creating -= 1
        session = Session(spec=spec.model_copy(update={"cmd": ""}), backend=backend, handle=handle)
        self._sessions[spec.session_id] = session
        self.save(session)
        for hook in self.on_create:
            hook(session, pooled)
        log.info("session %s created (%s %s)", spec.session_id, handle.backend, handle.sandbox_id)
        return session

    def adopt(self, session: Session) -> None:
        """Register a session taken over from a dead daemon (runtime/readopt.py)."""
        if session.session_id in self._sessions:
            raise BoxSessionConflictError(f"session {session.session_id} exists already")
        self._sessions[session.session_id] = session

    # ── records (for a successor) ────────────────────────────────────────

    def save(self, session: Session, handover: bool = False) -> None:
        """Write the session's record, where its sandbox can outlive this daemon."""
        if self.records is None or not session.backend.survives_daemon() or session.closing:
            return
        self.records.save(session_record(session, handover))
        session.saved_used_at = session.last_used_at

    def save_timestamps(self) -> None:
        """Write the records whose last use changed since they were written (each reaper round:
        a successor's TTL counts from about the right moment, without a write per exec)."""
        for session in list(self._sessions.values()):
            if session.saved_used_at != session.last_used_at:
                self.save(session)

    # ── freezing ─────────────────────────────────────────────────────────

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[None]:
        """Hold the per-id lock of ``session_id`` (nothing creates, changes or removes it)."""
        async with self._locks.hold(session_id):
            yield

    async def _thaw(self, session: Session) -> None:
        """Under the session's lock: thaw it if it is frozen."""
        if session.suspended:
            started = time.perf_counter()
            await session.backend.thaw(session.handle)
            session.suspended = False
            log.info("session %s thawed in %.1f ms", session.session_id, (time.perf_counter() - started) * 1000)

    async def thaw(self, session_id: str) -> None:
        """Thaw the session if it is frozen; a no-op for one that is not."""
        session = self._sessions.get(session_id)
        if session is None or not session.suspended:
            return
        async with self._locks.hold(session_id):
            await self._thaw(session)

    async def used(self, session_id: str) -> None:
        """Traffic that reaches the session outside a lease (a relay's): it counts as a use, and
        a frozen session is thawed first."""
        session = self._sessions.get(session_id)
        if session is not None:
            await self.thaw(session_id)
            session.touch()

    @contextlib.asynccontextmanager
    async def lease(self, spec: BoxSpec) -> AsyncIterator[Session]:
        """The session for ``spec``, protected from the reaper while the caller uses it."""
        with _in_use(await self.get_or_create(spec)) as session:
            yield session

    @contextlib.asynccontextmanager
    async def lease_existing(self, session_id: str) -> AsyncIterator[Session]:
        """An existing session, protected from the reaper while the caller uses it."""
        with _in_use(self.get(session_id)) as session:
            if session.suspended:
                await self.thaw(session_id)
            yield session

    # ── removal ──────────────────────────────────────────────────────────

    async def delete(self, session_id: str) -> None:
        async with self._locks.hold(session_id):
            session = self.get(session_id)
            await self._remove(session, keep_workspace=False)

    async def _remove(self, session: Session, keep_workspace: bool) -> None:
        session.closing = True
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        self._closing += 1
        if self.records is not None:
            self.records.remove(session.handle.key)
        with anyio.CancelScope(shield=True):  # a half-removed sandbox would leak
            try:
                await self._thaw(session)  # frozen processes cannot take a signal
            except Exception:
                log.exception("session %s: thawing before removal failed", session.session_id)
            for hook in self.on_remove:
                try:
                    await hook(session)
                except Exception:
                    log.exception("session %s: cleanup hook failed", session.session_id)
            try:
                await session.backend.stop(session.handle, keep_workspace=keep_workspace)
            except Exception:
                log.exception("session %s: removing the sandbox failed", session.session_id)
            finally:
                self._closing -= 1
        log.info("session %s removed", session.session_id)

    def set_deadline(self, session_id: str, when: dt.datetime | None) -> Session:
        """Remove the session at ``when`` (None: only when idle past the TTL, as usual)."""
        session = self.get(session_id)
        session.expires_at = when
        self.save(session)
        self._deadline_changed.set()  # the reaper may have to wake up sooner
        return session

    def _due(self, session: Session, cutoff: dt.datetime, now: dt.datetime) -> bool:
        if session.expires_at is not None:
            return session.expires_at <= now
        return not session.spec.persistent and not session.busy() and session.last_used_at < cutoff

    async def reap_expired(self) -> list[str]:
        """Remove sessions past their deadline, and idle, non-persistent sessions unused for
        longer than the TTL."""
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self._ttl_sec())
        expired = [s for s in self._sessions.values() if self._due(s, cutoff, now)]
        reaped = []
        for session in expired:
            async with self._locks.hold(session.session_id):
                # Re-check under the lock: it may have been used, extended or removed meanwhile.
                if self._sessions.get(session.session_id) is not session or not self._due(session, cutoff, now):
                    continue
                await self._remove(session, keep_workspace=False)
                reaped.append(session.session_id)
        return reaped

    def _next_wake(self, interval: float) -> float:
        deadlines = [s.expires_at for s in self._sessions.values() if s.expires_at is not None]
        if not deadlines:
            return interval
        return max(0.0, min(interval, (min(deadlines) - utcnow()).total_seconds()))

    async def run_reaper(self, interval: Callable[[], float]) -> None:
        while True:
            with anyio.move_on_after(self._next_wake(interval())):
                await self._deadline_changed.wait()
            self._deadline_changed = anyio.Event()
            try:
                reaped = await self.reap_expired()
                self.save_timestamps()
            except Exception:
                log.exception("session reaper failed")
                continue
            if reaped:
                log.info("reaped idle sessions: %s", ", ".join(reaped))

    def hand_over(self) -> list[Session]:
        """At a handover: write the records of the sessions whose sandboxes outlive the daemon
        in full, and forget those sessions (they run on for a successor); returns them. The
        others stay registered, to be removed as usual."""
        kept = []
        for session in list(self._sessions.values()):
            if session.backend.survives_daemon() and self.records is not None:
                self.save(session, handover=True)
                del self._sessions[session.session_id]
                kept.append(session)
        return kept

    async def remove_all(self, include_persistent: bool, keep_workspaces: bool) -> list[str]:
        targets = [s for s in self._sessions.values() if include_persistent or not s.spec.persistent]

        async def remove(session: Session) -> None:
            async with self._locks.hold(session.session_id):
                if self._sessions.get(session.session_id) is session:
                    await self._remove(session, keep_workspace=keep_workspaces)

        async with anyio.create_task_group() as tg:
            for session in targets:
                tg.start_soon(remove, session)
        return [s.session_id for s in targets]
