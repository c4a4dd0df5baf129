"""Re-adoption and idle suspend in the runtime, over the in-memory backend: records written and
claimed, a handover and a take-over, a live daemon's records never claimed, freezing and the
thaw every lease does first. (The real backends: integration_tests/test_readopt.py and
test_suspend.py.)"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from boxruntime.config import Settings
from boxruntime.models import BackendInfo, BoxSpec, ManagedProcessSpec, utcnow
from boxruntime.runtime.core import BoxRuntime
from boxruntime.runtime.processes import Attachment, ManagedProcess
from boxruntime.runtime.records import RecordBook
from tests.fakes import FakeBackend, FakeSandbox, StreamedFake

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class World:
    """One engine that outlives daemons: every fake backend selected shares its sandboxes."""

    def __init__(self) -> None:
        self.live: dict[str, Any] = {}
        self.frozen: set[str] = set()
        self.backends: list[FakeBackend] = []

    async def __call__(self, settings: Settings, instance_id: str) -> tuple[FakeBackend, BackendInfo]:
        backend = FakeBackend(settings, instance_id)
        backend.live = self.live
        backend.frozen = self.frozen
        backend.survives = True
        backend.freezable = True
        self.backends.append(backend)
        return backend, await backend.probe()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    engine = World()
    monkeypatch.setattr("boxruntime.runtime.core.select_backend", engine)
    return engine


@pytest.fixture
async def runtimes(tmp_path: Path) -> AsyncIterator[list[BoxRuntime]]:
    made: list[BoxRuntime] = []
    yield made
    for runtime in made:
        if not runtime._closing:
            await runtime.close()


async def daemon(runtimes: list[BoxRuntime], data_dir: Path, **settings: Any) -> BoxRuntime:
    runtime = BoxRuntime(Settings(data_dir=data_dir, **settings))
    await runtime.start()
    runtimes.append(runtime)
    return runtime


def records_of(data_dir: Path, runtime: BoxRuntime) -> dict[str, Any]:
    directory = data_dir / "records" / runtime.instance_id
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")} if directory.is_dir() else {}


async def test_a_handover_passes_sessions_to_the_next_daemon(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await daemon(runtimes, data)
    kept = await first.create_session(BoxSpec(session_id="kept", persistent=True))
    await first.create_session(BoxSpec(session_id="other"))
    deadline = utcnow() + dt.timedelta(hours=1)
    first.sessions.set_deadline("other", deadline)
    written = records_of(data, first)
    assert {r["session_id"] for r in written.values()} == {"kept", "other"}
    assert next(r for r in written.values() if r["session_id"] == "other")["expires_at"] is not None

    assert await first.close(keep=True) is True
    assert len(world.live) == 2  # nothing was removed

    second = await daemon(runtimes, data)
    assert second.readopted and sorted(second.readopted) == ["kept", "other"]
    again = second.get_session("kept")
    assert again.persistent is True and again.created_at == kept.created_at
    assert again.backend_session_id == kept.backend_session_id
    assert second.sessions.get("other").expires_at == deadline
    result = await second.exec(BoxSpec(session_id="kept", persistent=True, cmd="true"))
    assert result.exit_code == 0
    assert ("exec", kept.backend_session_id) in world.backends[-1].calls
    # The records moved with the sessions; the dead daemon's are gone.
    assert sorted(r["session_id"] for r in records_of(data, second).values()) == ["kept", "other"]
    assert not (data / "records" / first.instance_id).exists()

    await second.delete_session("other")
    assert sorted(r["session_id"] for r in records_of(data, second).values()) == ["kept"]


async def test_a_plain_close_removes_everything_and_leaves_no_record(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await daemon(runtimes, data)
    await first.create_session(BoxSpec(session_id="gone"))
    assert await first.close() is False
    assert world.live == {} and records_of(data, first) == {}
    second = await daemon(runtimes, data)
    assert second.readopted == [] and second.list_sessions() == []


async def test_a_live_daemons_records_are_never_claimed(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    live = await daemon(runtimes, data)
    mine = await live.create_session(BoxSpec(session_id="mine"))
    newcomer = await daemon(runtimes, data)
    assert newcomer.readopted == [] and newcomer.list_sessions() == []
    assert [r["session_id"] for r in records_of(data, live).values()] == ["mine"]
    # Its orphan cleanup was told to spare the live daemon's sandbox.
    cleanup = next(arg for name, arg in world.backends[-1].calls if name == "cleanup_orphans")
    assert mine.backend_session_id in cleanup.split(",")
    assert live.get_session("mine").backend_session_id == mine.backend_session_id


async def test_without_readopt_nothing_is_recorded_or_taken_over(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = await daemon(runtimes, data, readopt=False)
    await first.create_session(BoxSpec(session_id="s"))
    assert records_of(data, first) == {}
    assert await first.close(keep=True) is False  # nothing could take them over: removed
    assert world.live == {}


async def test_a_record_that_no_longer_validates_is_dropped(tmp_path: Path) -> None:
    book = RecordBook(tmp_path, "dead0instance")
    (tmp_path / "records" / "dead0instance").mkdir(parents=True)
    (tmp_path / "records" / "dead0instance" / "k.json").write_text("{not json")
    successor = RecordBook(tmp_path, "live0instance")
    assert successor.claim_dead() == []
    assert not (tmp_path / "records" / "dead0instance").exists()
    assert not list((tmp_path / "records" / "live0instance").glob("*.json"))
    assert book.claimed_sandboxes() == set()


# ── idle suspend ─────────────────────────────────────────────────────────


def idle_for(runtime: BoxRuntime, session_id: str, seconds: float) -> None:
    session = runtime.sessions.get(session_id)
    session.last_used_at = utcnow() - dt.timedelta(seconds=seconds)


async def test_an_idle_session_is_frozen_and_its_next_lease_thaws_it(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    runtime = await daemon(runtimes, tmp_path / "data", suspend_idle_sec=60)
    made = await runtime.create_session(BoxSpec(session_id="s"))
    await runtime.create_session(BoxSpec(session_id="busy"))
    assert await runtime.suspender.freeze_idle() == []  # used just now
    idle_for(runtime, "s", 120)
    idle_for(runtime, "busy", 120)
    async with runtime.sessions.lease_existing("busy"):
        assert await runtime.suspender.freeze_idle() == ["s"]  # a lease in progress keeps it awake
    assert runtime.get_session("s").suspended is True
    assert world.frozen == {made.backend_session_id}

    # The fake refuses a command in a frozen sandbox: the exec works only because it thaws first.
    result = await runtime.exec(BoxSpec(session_id="s", cmd="true"))
    assert result.exit_code == 0 and world.frozen == set()
    assert runtime.get_session("s").suspended is False

    idle_for(runtime, "s", 120)
    assert await runtime.suspender.freeze_idle() == ["s"]
    await runtime.delete_session("s")  # a frozen sandbox is thawed before it is removed
    calls = [name for name, arg in world.backends[-1].calls if arg == made.backend_session_id]
    assert calls[-3:] == ["freeze", "thaw", "stop"]


async def test_a_process_with_a_relay_client_keeps_its_session_awake(
    world: World, runtimes: list[BoxRuntime], tmp_path: Path
) -> None:
    runtime = await daemon(runtimes, tmp_path / "data", suspend_idle_sec=60)
    await runtime.create_session(BoxSpec(session_id="s"))
    session = runtime.sessions.get("s")
    process = ManagedProcess(session_id="s", spec=ManagedProcessSpec(command="cat"), process=StreamedFake([]))
    session.processes["default"] = process
    process.attach()
    assert isinstance(process.attachment, Attachment)
    idle_for(runtime, "s", 120)
    assert await runtime.suspender.freeze_idle() == []
    runtime.settings.suspend_with_relay = True
    assert await runtime.suspender.freeze_idle() == ["s"]
    await runtime.sessions.used("s")  # relay traffic thaws
    assert runtime.get_session("s").suspended is False
    assert isinstance(session.handle, FakeSandbox) and session.handle.sandbox_id not in world.frozen
    process.exited_at = utcnow()  # (nothing pumps this stand-in: it ends here, not at teardown)
    process.exited.set()
