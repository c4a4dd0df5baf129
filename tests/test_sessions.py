"""SessionManager over the in-memory backend: reuse rules, locking, capacity, reaping."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import pytest

from boxruntime.errors import (
    BoxCapacityExceededError,
    BoxSandboxError,
    BoxSessionConflictError,
    BoxSessionNotFoundError,
)
from boxruntime.models import SESSION_IDENTITY_FIELDS, BoxSpec, utcnow
from boxruntime.runtime.sessions import Session, SessionManager
from tests.fakes import FakeBackend

pytestmark = pytest.mark.anyio

LONG_AGO = dt.timedelta(hours=1)
# Turns a regression into a deadlock into a failure instead of a hang; never a timing assertion.
DEADLOCK_GUARD_SEC = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Limits:
    def __init__(self, max_sessions: int = 64, ttl_sec: int = 300) -> None:
        self.max_sessions = max_sessions
        self.ttl_sec = ttl_sec


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
def manager(fake: FakeBackend, limits: Limits) -> SessionManager:
    async def provider() -> FakeBackend:
        return fake

    return SessionManager(provider, max_sessions=lambda: limits.max_sessions, ttl_sec=lambda: limits.ttl_sec)


def spec(session_id: str = "s1", **fields: Any) -> BoxSpec:
    return BoxSpec.model_validate({"session_id": session_id, **fields})


def lock_users(manager: SessionManager) -> dict[str, int]:
    """Per-id lock map: id -> tasks holding or waiting for the lock."""
    return {key: users for key, (_, users) in manager._locks._locks.items()}


# ── get-or-create and reuse ──────────────────────────────────────────────


async def test_creates_once_then_reuses(manager: SessionManager, fake: FakeBackend) -> None:
    first = await manager.get_or_create(spec(cmd="echo one"))
    assert fake.starts("s1") == 1
    assert first.handle.sandbox_id in fake.live
    assert first.spec.cmd == ""  # the stored identity does not keep a command
    first.last_used_at -= LONG_AGO

    again = await manager.get_or_create(spec(cmd="echo two"))

    assert again is first
    assert fake.starts("s1") == 1
    assert ("alive", first.handle.sandbox_id) in fake.calls
    assert again.last_used_at > utcnow() - dt.timedelta(minutes=1)  # reuse touched it
    assert manager.get("s1") is first
    assert len(manager) == 1


# A value for each identity field that differs from BoxSpec's default, and the default as the
# error message shows it.
IDENTITY_CHANGES: dict[str, tuple[Any, str]] = {
    "network": ("on", "off"),
    "image": ("other/image:1", "rockchin/langbot-sandbox:latest"),
    "host_path": ("/srv/project", "None"),
    "host_path_mode": ("ro", "rw"),
    "mount_path": ("/data", "/workspace"),
    "persistent": (True, "False"),
    "cpus": (2.5, "1.0"),
    "memory_mb": (1024, "512"),
    "pids_limit": (256, "128"),
    "read_only_rootfs": (False, "True"),
    "workspace_quota_mb": (100, "0"),
}


def test_identity_change_table_covers_every_identity_field() -> None:
    assert set(IDENTITY_CHANGES) == set(SESSION_IDENTITY_FIELDS)


@pytest.mark.parametrize("field", SESSION_IDENTITY_FIELDS)
async def test_identity_field_change_conflicts(manager: SessionManager, fake: FakeBackend, field: str) -> None:
    original = await manager.get_or_create(spec())
    new_value, stored = IDENTITY_CHANGES[field]
    extra = {"workdir": new_value} if field == "mount_path" else {}

    with pytest.raises(BoxSessionConflictError) as caught:
        await manager.get_or_create(spec(**{field: new_value, **extra}))

    assert str(caught.value) == f"Box session s1 already exists with {field}={stored}"
    assert manager.get("s1") is original
    assert fake.starts() == 1
    assert fake.stopped == []


async def test_conflict_names_the_stored_value_not_the_requested_one(manager: SessionManager) -> None:
    await manager.get_or_create(spec(memory_mb=2048))
    with pytest.raises(BoxSessionConflictError, match=r"^Box session s1 already exists with memory_mb=2048$"):
        await manager.get_or_create(spec(memory_mb=512))


MOUNT_A = {"host_path": "/srv/a", "mount_path": "/mnt/a", "mode": "ro"}
MOUNT_B = {"host_path": "/srv/b", "mount_path": "/mnt/b", "mode": "rw"}


@pytest.mark.parametrize(
    ("stored", "requested"),
    [
        ([], [MOUNT_A]),
        ([MOUNT_A], []),
        ([MOUNT_A], [{**MOUNT_A, "mode": "rw"}]),
        ([MOUNT_A], [MOUNT_B]),
    ],
)
async def test_different_extra_mount_set_conflicts(
    manager: SessionManager, fake: FakeBackend, stored: list[dict[str, str]], requested: list[dict[str, str]]
) -> None:
    await manager.get_or_create(spec(extra_mounts=stored))
    with pytest.raises(BoxSessionConflictError, match=r"^Box session s1 already exists with .*extra_mounts"):
        await manager.get_or_create(spec(extra_mounts=requested))
    assert fake.starts() == 1


async def test_same_extra_mount_set_in_another_order_is_reused(manager: SessionManager, fake: FakeBackend) -> None:
    # The mounts are a set (reference §D.3): listing them in another order is the same request.
    first = await manager.get_or_create(spec(extra_mounts=[MOUNT_A, MOUNT_B]))
    again = await manager.get_or_create(spec(extra_mounts=[MOUNT_B, MOUNT_A]))
    assert again is first
    assert fake.starts() == 1


async def test_mounts_with_mode_none_do_not_count(manager: SessionManager, fake: FakeBackend) -> None:
    first = await manager.get_or_create(spec())
    again = await manager.get_or_create(spec(extra_mounts=[{**MOUNT_A, "mode": "none"}]))
    assert again is first
    assert fake.starts() == 1


async def test_per_call_fields_do_not_conflict(manager: SessionManager, fake: FakeBackend) -> None:
    first = await manager.get_or_create(spec(cmd="true", env={"A": "1"}, workdir="/workspace", timeout_sec=30))
    again = await manager.get_or_create(spec(cmd="ls -la", env={"B": "2"}, workdir="/tmp", timeout_sec=600))
    assert again is first
    assert fake.starts() == 1
    assert first.spec.env == {"A": "1"}  # the stored spec is the creating one


async def test_dead_sandbox_is_dropped_and_recreated(manager: SessionManager, fake: FakeBackend) -> None:
    old = await manager.get_or_create(spec())
    fake.dead.add(old.handle.sandbox_id)

    new = await manager.get_or_create(spec())

    assert new is not old
    assert new.handle.sandbox_id != old.handle.sandbox_id
    assert fake.starts("s1") == 2
    assert [sid for sid, _ in fake.stopped] == [old.handle.sandbox_id]
    assert old.closing
    assert manager.get("s1") is new
    assert len(manager) == 1


# ── concurrency ──────────────────────────────────────────────────────────


async def test_creations_of_different_ids_run_in_parallel(manager: SessionManager, fake: FakeBackend) -> None:
    gate_a = fake.gate("a")
    entered_a = fake.started("a")
    created: dict[str, Session] = {}

    async def create(session_id: str) -> None:
        created[session_id] = await manager.get_or_create(spec(session_id))

    async with anyio.create_task_group() as tg:
        tg.start_soon(create, "a")
        await entered_a.wait()
        # a's start is blocked; b must not wait for it.
        with anyio.fail_after(DEADLOCK_GUARD_SEC):
            await create("b")
        assert "b" in created and "a" not in created
        assert manager.get("b") is created["b"]
        assert fake.starts("a") == 1
        with pytest.raises(BoxSessionNotFoundError):
            manager.get("a")
        gate_a.set()

    assert manager.get("a") is created["a"]
    assert len(manager) == 2


async def test_creations_of_one_id_are_serialised(manager: SessionManager, fake: FakeBackend) -> None:
    gate = fake.gate("a")
    entered = fake.started("a")
    results: list[Session] = []

    async def create() -> None:
        results.append(await manager.get_or_create(spec("a")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(create)
        tg.start_soon(create)
        await entered.wait()
        await anyio.wait_all_tasks_blocked()
        # Both calls are in: one in start, the other waiting for the id's lock.
        assert lock_users(manager) == {"a": 2}
        assert fake.starts("a") == 1
        gate.set()

    assert fake.starts("a") == 1
    assert len(results) == 2
    assert results[0] is results[1]


async def test_capacity_counts_creations_in_flight(manager: SessionManager, fake: FakeBackend, limits: Limits) -> None:
    limits.max_sessions = 3
    ids = ["a", "b", "c"]
    gates = [fake.gate(i) for i in ids]
    entered = [fake.started(i) for i in ids]

    async with anyio.create_task_group() as tg:
        for session_id in ids:
            tg.start_soon(manager.get_or_create, spec(session_id))
        for event in entered:
            await event.wait()
        assert len(manager) == 0  # nothing registered yet, all three in flight
        with pytest.raises(BoxCapacityExceededError, match=r"\(3\)"):
            await manager.get_or_create(spec("d"))
        assert fake.starts("d") == 0
        for gate in gates:
            gate.set()

    assert sorted(s.session_id for s in manager.sessions()) == ids
    with pytest.raises(BoxCapacityExceededError):
        await manager.get_or_create(spec("d"))
    await manager.delete("a")
    assert (await manager.get_or_create(spec("d"))).session_id == "d"


async def test_reusing_at_capacity_is_allowed(manager: SessionManager, limits: Limits) -> None:
    limits.max_sessions = 1
    first = await manager.get_or_create(spec("a"))
    assert await manager.get_or_create(spec("a")) is first


async def test_failed_start_does_not_leak_a_capacity_slot(
    manager: SessionManager, fake: FakeBackend, limits: Limits
) -> None:
    limits.max_sessions = 1
    fake.fail_start["a"] = BoxSandboxError("engine said no")

    with pytest.raises(BoxSandboxError, match="engine said no"):
        await manager.get_or_create(spec("a"))

    assert len(manager) == 0
    assert manager._creating == 0
    assert (await manager.get_or_create(spec("b"))).session_id == "b"
    assert lock_users(manager) == {}


async def test_failed_start_can_be_retried(manager: SessionManager, fake: FakeBackend) -> None:
    fake.fail_start["a"] = BoxSandboxError("transient")
    with pytest.raises(BoxSandboxError):
        await manager.get_or_create(spec("a"))
    session = await manager.get_or_create(spec("a"))
    assert manager.get("a") is session
    assert fake.starts("a") == 2


# ── delete ───────────────────────────────────────────────────────────────


async def test_delete_removes_and_stops_without_keeping_the_workspace(
    manager: SessionManager, fake: FakeBackend
) -> None:
    session = await manager.get_or_create(spec())
    removed: list[str] = []

    async def hook(s: Session) -> None:
        removed.append(s.session_id)

    manager.on_remove.append(hook)
    await manager.delete("s1")

    assert fake.stopped == [(session.handle.sandbox_id, False)]
    assert session.handle.sandbox_id not in fake.live
    assert removed == ["s1"]
    assert len(manager) == 0
    with pytest.raises(BoxSessionNotFoundError):
        manager.get("s1")
    # The id is free again: a new request makes a new sandbox.
    assert (await manager.get_or_create(spec())).handle.sandbox_id != session.handle.sandbox_id


async def test_delete_unknown_session(manager: SessionManager, fake: FakeBackend) -> None:
    with pytest.raises(BoxSessionNotFoundError, match="nope"):
        await manager.delete("nope")
    assert fake.stopped == []
    assert lock_users(manager) == {}


async def test_failing_stop_still_removes_the_session(manager: SessionManager, fake: FakeBackend) -> None:
    await manager.get_or_create(spec())

    async def broken_stop(handle: Any, keep_workspace: bool = False) -> None:
        raise BoxSandboxError("engine went away")

    fake.stop = broken_stop  # type: ignore[method-assign]
    await manager.delete("s1")  # logged, not raised
    assert len(manager) == 0


# ── reaper ───────────────────────────────────────────────────────────────


async def test_reaper_removes_only_idle_expired_non_persistent_sessions(
    manager: SessionManager, fake: FakeBackend, limits: Limits
) -> None:
    limits.ttl_sec = 1
    idle = await manager.get_or_create(spec("idle"))
    persistent = await manager.get_or_create(spec("persistent", persistent=True))
    kept_alive = await manager.get_or_create(spec("kept-alive"))
    kept_alive.keepalive.append(lambda: True)
    not_kept = await manager.get_or_create(spec("not-kept"))
    not_kept.keepalive.append(lambda: False)
    recent = await manager.get_or_create(spec("recent"))
    for session in (idle, persistent, kept_alive, not_kept):
        session.last_used_at = utcnow() - LONG_AGO

    async with manager.lease(spec("leased")) as leased:
        leased.last_used_at = utcnow() - LONG_AGO
        reaped = await manager.reap_expired()
        assert manager.get("leased") is leased

    assert sorted(reaped) == ["idle", "not-kept"]
    assert sorted(s.session_id for s in manager.sessions()) == ["kept-alive", "leased", "persistent", "recent"]
    assert sorted(sid for sid, _ in fake.stopped) == sorted([idle.handle.sandbox_id, not_kept.handle.sandbox_id])
    assert manager.get("recent") is recent


async def test_reaper_respects_the_ttl(manager: SessionManager, limits: Limits) -> None:
    limits.ttl_sec = 3600
    session = await manager.get_or_create(spec())
    session.last_used_at = utcnow() - dt.timedelta(minutes=30)
    assert await manager.reap_expired() == []
    limits.ttl_sec = 600
    assert await manager.reap_expired() == ["s1"]


async def test_session_used_between_scan_and_lock_is_not_reaped(
    manager: SessionManager, fake: FakeBackend, limits: Limits
) -> None:
    limits.ttl_sec = 1
    session = await manager.get_or_create(spec())
    session.last_used_at = utcnow() - LONG_AGO
    alive_gate = fake.alive_gates["s1"] = anyio.Event()
    reaped: list[str] = []

    async def reap() -> None:
        reaped.extend(await manager.reap_expired())

    async with anyio.create_task_group() as tg:
        # A reuse holds the id's lock (blocked in the liveness probe) ...
        tg.start_soon(manager.get_or_create, spec())
        await anyio.wait_all_tasks_blocked()
        assert lock_users(manager) == {"s1": 1}
        # ... while the reaper scans, finds the session expired and queues for the lock.
        tg.start_soon(reap)
        await anyio.wait_all_tasks_blocked()
        assert lock_users(manager) == {"s1": 2}
        alive_gate.set()

    assert reaped == []
    assert manager.get("s1") is session
    assert fake.stopped == []


async def test_session_deleted_between_scan_and_lock_is_skipped(
    manager: SessionManager, fake: FakeBackend, limits: Limits
) -> None:
    limits.ttl_sec = 1
    session = await manager.get_or_create(spec())
    session.last_used_at = utcnow() - LONG_AGO
    alive_gate = fake.alive_gates["s1"] = anyio.Event()
    fake.dead.add(session.handle.sandbox_id)  # the reuse will drop and recreate it
    reaped: list[str] = []

    async def reap() -> None:
        reaped.extend(await manager.reap_expired())

    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.get_or_create, spec())
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(reap)
        await anyio.wait_all_tasks_blocked()
        alive_gate.set()

    assert reaped == []
    assert manager.get("s1") is not session
    assert [sid for sid, _ in fake.stopped] == [session.handle.sandbox_id]  # stopped once, by the reuse


# ── remove_all ───────────────────────────────────────────────────────────


async def test_remove_all_without_persistent_keeps_persistent(manager: SessionManager, fake: FakeBackend) -> None:
    await manager.get_or_create(spec("a"))
    await manager.get_or_create(spec("b"))
    keep = await manager.get_or_create(spec("p", persistent=True))

    removed = await manager.remove_all(include_persistent=False, keep_workspaces=False)

    assert sorted(removed) == ["a", "b"]
    assert manager.sessions() == [keep]
    assert len(fake.stopped) == 2
    assert all(keep_workspace is False for _, keep_workspace in fake.stopped)
    assert keep.handle.sandbox_id in fake.live


async def test_remove_all_with_persistent_removes_everything(manager: SessionManager, fake: FakeBackend) -> None:
    await manager.get_or_create(spec("a"))
    await manager.get_or_create(spec("p", persistent=True))

    removed = await manager.remove_all(include_persistent=True, keep_workspaces=True)

    assert sorted(removed) == ["a", "p"]
    assert len(manager) == 0
    assert fake.live == {}
    assert sorted(keep for _, keep in fake.stopped) == [True, True]
    assert lock_users(manager) == {}


# ── lock map ─────────────────────────────────────────────────────────────


async def test_lock_map_does_not_grow(manager: SessionManager, fake: FakeBackend, limits: Limits) -> None:
    limits.max_sessions = 5000
    ids = [f"user-{n}" for n in range(1000)]

    async def churn(session_id: str) -> None:
        await manager.get_or_create(spec(session_id))
        await manager.get_or_create(spec(session_id, env={"X": "1"}))
        with pytest.raises(BoxSessionConflictError):
            await manager.get_or_create(spec(session_id, memory_mb=64))
        await manager.delete(session_id)
        with pytest.raises(BoxSessionNotFoundError):
            await manager.delete(session_id)

    async with anyio.create_task_group() as tg:
        for session_id in ids:
            tg.start_soon(churn, session_id)

    assert fake.starts() == 1000
    assert len(manager) == 0
    assert manager._locks._locks == {}


async def test_lock_map_is_cleaned_when_a_waiter_is_cancelled(manager: SessionManager, fake: FakeBackend) -> None:
    gate = fake.gate("a")
    entered = fake.started("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.get_or_create, spec("a"))
        await entered.wait()
        with anyio.CancelScope() as waiter:
            waiter.cancel()
            await manager.get_or_create(spec("a"))  # cancelled while waiting for the lock
        assert lock_users(manager) == {"a": 1}
        gate.set()
    assert manager._locks._locks == {}
    assert fake.starts("a") == 1
