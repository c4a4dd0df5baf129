"""BoxRuntime through the real action table (handlers.py), over the in-memory backend."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from langbot_plugin.box.models import BoxExecutionResult, BoxSessionInfo

from boxruntime.backends.contract import Command
from boxruntime.config import Settings
from boxruntime.edges.handlers import BoxActions
from boxruntime.edges.server import skill_actions
from boxruntime.errors import (
    BoxBackendUnavailableError,
    BoxCapacityExceededError,
    BoxRuntimeUnavailableError,
    BoxSessionNotFoundError,
    BoxValidationError,
)
from boxruntime.ids import safe_key
from boxruntime.models import OUTPUT_CAP_BYTES, BackendInfo
from boxruntime.protocol import ActionHandler
from boxruntime.runtime.core import BoxRuntime
from tests.fakes import CHUNK, FakeBackend, Scripted

pytestmark = pytest.mark.anyio

LANGBOT_SESSION_FIELDS = set(BoxSessionInfo.model_fields)
LANGBOT_RESULT_FIELDS = set(BoxExecutionResult.model_fields)
CLIP_MARKER = "\n... [raw output clipped at 1048576 bytes, {} bytes discarded]"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Selector:
    """Stands in for ``select_backend``: a fresh fake backend per selection, as the real one."""

    def __init__(self) -> None:
        self.backends: list[FakeBackend] = []
        self.unavailable = False

    async def __call__(self, settings: Settings, instance_id: str) -> tuple[FakeBackend, BackendInfo]:
        if self.unavailable:
            raise BoxBackendUnavailableError("no sandbox backend available for backend='local': docker: not here")
        backend = FakeBackend(settings, instance_id)
        self.backends.append(backend)
        return backend, await backend.probe()

    @property
    def current(self) -> FakeBackend:
        return self.backends[-1]


class Box:
    def __init__(self, runtime: BoxRuntime, selector: Selector) -> None:
        self.runtime = runtime
        self.selector = selector
        self.actions: dict[str, ActionHandler] = BoxActions(runtime, skill_actions(runtime.settings)).table().wire()

    @property
    def fake(self) -> FakeBackend:
        return self.selector.current

    async def call(self, action: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        result = await self.actions[action](data or {})  # type: ignore[misc]
        json.dumps(result)  # everything an action returns must go on the wire as is
        return result  # type: ignore[no-any-return]

    async def stream(self, action: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        items = [item async for item in self.actions[action](data)]  # type: ignore[union-attr]
        json.dumps(items)
        return items


@pytest.fixture
async def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Box]:
    selector = Selector()
    monkeypatch.setattr("boxruntime.runtime.core.select_backend", selector)
    runtime = BoxRuntime(Settings(data_dir=tmp_path / "data"))
    await runtime.start()
    try:
        yield Box(runtime, selector)
    finally:
        await runtime.close()


# ── box_exec ─────────────────────────────────────────────────────────────


async def test_exec_result_shape(box: Box) -> None:
    box.fake.results.append(
        Scripted(code=3, stdout=b"  hello\n", stderr=b"\nwarn  \n", wall_ms=42, cpu_ms=5, peak_rss_kb=2048)
    )

    result = await box.call(
        "box_exec",
        {"session_id": "s1", "cmd": "  echo hello ", "env": {"A": 1}, "workdir": "/workspace/sub", "timeout_sec": 12},
    )

    assert result == {
        "session_id": "s1",
        "backend_name": "fake",
        "status": "completed",
        "exit_code": 3,
        "stdout": "hello",
        "stderr": "warn",
        "duration_ms": 42,
        "end_reason": "exit",
        "signal": None,
        "cpu_ms": 5,
        "peak_rss_kb": 2048,
        "stdout_bytes": 8,
        "stderr_bytes": 8,
    }
    assert set(result) >= LANGBOT_RESULT_FIELDS
    langbot = BoxExecutionResult.model_validate(result)
    assert (langbot.status.value, langbot.exit_code, langbot.stdout) == ("completed", 3, "hello")
    assert box.fake.requests == [
        Command(cwd="/workspace/sub", env={"A": "1"}, script="echo hello", timeout=12.0, output_cap=OUTPUT_CAP_BYTES)
    ]


async def test_exec_creates_the_session_once_and_reuses_it(box: Box) -> None:
    await box.call("box_exec", {"session_id": "s1", "cmd": "true"})
    await box.call("box_exec", {"session_id": "s1", "cmd": "true", "env": {"X": "y"}})
    assert box.fake.starts("s1") == 1
    assert len(box.fake.requests) == 2
    info = await box.call("box_get_session", {"session_id": "s1"})
    assert info["status"] == "idle"  # the lease ended with the exec


async def test_exec_output_is_clipped_with_langbots_marker(box: Box) -> None:
    extra = 123
    box.fake.results.append(
        Scripted(stdout=b"a" * (OUTPUT_CAP_BYTES + extra), stderr=b" " + b"b" * OUTPUT_CAP_BYTES + b"tail")
    )

    result = await box.call("box_exec", {"session_id": "s1", "cmd": "yes"})

    assert result["stdout"] == "a" * OUTPUT_CAP_BYTES + CLIP_MARKER.format(extra)
    # The kept megabyte starts with a space that is stripped; the discarded count is raw bytes.
    assert result["stderr"] == "b" * (OUTPUT_CAP_BYTES - 1) + CLIP_MARKER.format(5)
    assert result["stdout_bytes"] == OUTPUT_CAP_BYTES + extra
    assert result["stderr_bytes"] == OUTPUT_CAP_BYTES + 5


async def test_exec_output_at_the_cap_is_not_marked(box: Box) -> None:
    box.fake.results.append(Scripted(stdout=b"c" * OUTPUT_CAP_BYTES, stderr=b"caf\xc3\xa9 \xff"))
    result = await box.call("box_exec", {"session_id": "s1", "cmd": "x"})
    assert result["stdout"] == "c" * OUTPUT_CAP_BYTES
    assert result["stderr"] == "café \ufffd"  # decoded with replacement, as LangBot does


async def test_exec_timeout_keeps_the_session(box: Box) -> None:
    box.fake.results.append(Scripted.timeout())

    result = await box.call("box_exec", {"session_id": "s1", "cmd": "sleep 100", "timeout_sec": 5})

    assert result["status"] == "timed_out"
    assert result["exit_code"] is None
    assert result["stderr"] == "Command timed out after 5 seconds."
    assert result["end_reason"] == "timeout"
    assert BoxExecutionResult.model_validate(result).ok is False
    # Unlike LangBot, the session (and anything else running in it) survives the timeout.
    info = await box.call("box_get_session", {"session_id": "s1"})
    assert info["backend_session_id"] in box.fake.live
    assert box.fake.stopped == []
    again = await box.call("box_exec", {"session_id": "s1", "cmd": "echo ok"})
    assert again["status"] == "completed"
    assert box.fake.starts("s1") == 1


async def test_exec_timeout_keeps_captured_stderr(box: Box) -> None:
    box.fake.results.append(Scripted.timeout(stdout=b"partial\n", stderr=b"working...\n"))
    result = await box.call("box_exec", {"session_id": "s1", "cmd": "slow", "timeout_sec": 1})
    assert (result["stdout"], result["stderr"]) == ("partial", "working...")


@pytest.mark.parametrize("data", [{"session_id": "s1", "cmd": "   "}, {"session_id": "s1"}])
async def test_exec_requires_a_command(box: Box, data: dict[str, Any]) -> None:
    with pytest.raises(BoxValidationError) as caught:
        await box.call("box_exec", data)
    assert str(caught.value) == "cmd must not be empty"
    assert box.fake.starts() == 0
    assert box.runtime.list_sessions() == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"session_id": "s1", "cmd": "x", "memory_mb": 8}, "memory_mb must be at least 32"),
        ({"cmd": "x"}, "session_id\n  Field required"),
        ({"session_id": "s1", "cmd": "x", "workdir": "relative"}, "workdir must be an absolute path"),
        ({"session_id": "s1", "cmd": "x", "timeout_sec": 0}, "timeout_sec must be greater than 0"),
        ({"session_id": "s1", "cmd": "x", "network": "sometimes"}, "network\n  Input should be 'off' or 'on'"),
    ],
)
async def test_exec_rejects_an_invalid_spec_with_pydantics_text(box: Box, data: dict[str, Any], expected: str) -> None:
    with pytest.raises(BoxValidationError) as caught:
        await box.call("box_exec", data)
    assert "validation error for BoxSpec" in str(caught.value)
    assert expected in str(caught.value)
    assert box.fake.starts() == 0


async def test_exec_ignores_unknown_spec_keys(box: Box) -> None:
    result = await box.call("box_exec", {"session_id": "s1", "cmd": "true", "from_the_future": 1})
    assert result["status"] == "completed"


# ── sessions ─────────────────────────────────────────────────────────────


async def test_create_session_payload(box: Box) -> None:
    info = await box.call(
        "box_create_session",
        {"session_id": "chat/42", "cmd": "ignored", "memory_mb": 256, "network": "on", "persistent": True},
    )

    assert set(info) >= LANGBOT_SESSION_FIELDS
    assert box.fake.requests == []  # cmd is ignored by create_session
    langbot = BoxSessionInfo.model_validate(info)
    assert langbot.session_id == "chat/42"
    assert langbot.memory_mb == 256
    assert langbot.network.value == "on"
    assert langbot.persistent is True
    assert info["backend_name"] == "fake"
    handle = box.fake.live[info["backend_session_id"]]
    assert handle.key == safe_key("chat/42")  # the raw id never reaches the backend's names
    assert "/" not in info["backend_session_id"]
    assert info["created_at"].endswith("Z") and info["last_used_at"].endswith("Z")
    assert info["extra_mounts"] == []
    # Nothing runs in the new session, so it is idle (reference §C.4 [v0.7]).
    assert info["status"] == "idle"


async def test_create_session_reuses_a_compatible_session(box: Box) -> None:
    first = await box.call("box_create_session", {"session_id": "s1"})
    second = await box.call("box_create_session", {"session_id": "s1", "env": {"A": "b"}})
    assert second["backend_session_id"] == first["backend_session_id"]
    assert box.fake.starts() == 1


async def test_get_get_all_and_delete_sessions(box: Box) -> None:
    created = await box.call("box_create_session", {"session_id": "s1"})
    await box.call("box_create_session", {"session_id": "s2", "image": "python:3.12"})

    got = await box.call("box_get_session", {"session_id": "s1"})
    assert set(got) >= LANGBOT_SESSION_FIELDS
    volatile = {"last_used_at", "status"}
    assert {k: v for k, v in got.items() if k not in volatile} == {
        k: v for k, v in created.items() if k not in volatile
    }
    assert got["status"] == "idle"

    listing = await box.call("box_get_sessions")
    assert set(listing) == {"sessions"}
    by_id = {s["session_id"]: BoxSessionInfo.model_validate(s) for s in listing["sessions"]}
    assert sorted(by_id) == ["s1", "s2"]
    assert by_id["s2"].image == "python:3.12"

    assert await box.call("box_delete_session", {"session_id": "s1"}) == {"deleted": "s1"}
    assert box.fake.stopped == [(created["backend_session_id"], False)]
    assert [s["session_id"] for s in (await box.call("box_get_sessions"))["sessions"]] == ["s2"]
    with pytest.raises(BoxSessionNotFoundError):
        await box.call("box_get_session", {"session_id": "s1"})
    with pytest.raises(BoxSessionNotFoundError):
        await box.call("box_delete_session", {"session_id": "s1"})


async def test_session_actions_validate_the_id(box: Box) -> None:
    for action in ("box_get_session", "box_delete_session"):
        with pytest.raises(BoxValidationError, match="session_id"):
            await box.call(action, {})
        with pytest.raises(BoxValidationError, match="session_id must not be empty"):
            await box.call(action, {"session_id": "  "})


# ── status, init, shutdown ───────────────────────────────────────────────


async def test_status_shape(box: Box) -> None:
    await box.call("box_create_session", {"session_id": "s1"})
    await box.call("box_create_session", {"session_id": "s2"})

    status = await box.call("box_status")

    assert status == {
        "backend": {
            "name": "fake",
            "available": True,
            "reason": None,
            "enforced_limits": {"memory_mb": "fake"},
        },
        "active_sessions": 2,
        "managed_processes": 0,
        "session_ttl_sec": 300,
        "max_sessions": 64,
        # The pool only fills in the daemon's background tasks, which this test does not run.
        "pool": {"size": 2, "ready": 0, "hits": 0, "misses": 2},
    }


async def test_health_reports_an_unavailable_backend(box: Box) -> None:
    box.selector.unavailable = True
    await box.call("box_init", {"backend": "docker"})  # no sessions: selection starts over

    health = await box.call("box_health")

    assert health["name"] is None
    assert health["available"] is False
    assert "docker: not here" in health["reason"]
    with pytest.raises(BoxBackendUnavailableError):
        await box.call("box_exec", {"session_id": "s1", "cmd": "true"})


async def test_init_without_sessions_selects_the_backend_again(box: Box) -> None:
    first = box.fake
    assert len(box.selector.backends) == 1  # selected at start

    assert await box.call("box_init", {"backend": "docker"}) == {"initialized": True}

    assert box.runtime.settings.backend == "docker"
    assert first.closed
    assert len(box.selector.backends) == 1  # lazily: nothing selected until it is needed
    result = await box.call("box_exec", {"session_id": "s1", "cmd": "true"})
    assert result["status"] == "completed"
    assert len(box.selector.backends) == 2
    assert box.fake is not first
    assert box.fake.starts("s1") == 1 and first.starts() == 0


async def test_init_with_sessions_keeps_the_backend(box: Box) -> None:
    await box.call("box_create_session", {"session_id": "s1"})
    first = box.fake

    assert await box.call("box_init", {"backend": "docker"}) == {"initialized": True}

    assert box.runtime.settings.backend == "docker"  # the config still applies
    assert not first.closed
    await box.call("box_exec", {"session_id": "s1", "cmd": "true"})
    await box.call("box_status")
    assert box.selector.backends == [first]
    assert len(first.requests) == 1


async def test_init_during_a_creation_does_not_close_its_backend(box: Box) -> None:
    first = box.fake
    gate = first.gate("s1")
    entered = first.started("s1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(box.call, "box_create_session", {"session_id": "s1"})
        await entered.wait()
        # A second client connects and sends its INIT while s1's sandbox is being made.
        await box.call("box_init", {"backend": "docker"})
        gate.set()

    session = box.runtime.sessions.get("s1")
    assert session.backend is first
    assert not first.closed, "box_init closed the backend a session was being created on"


async def test_init_accepts_unknown_keys(box: Box) -> None:
    data = {
        "enabled": True,
        "default_memory_mb": 1024,
        "something_new": {"nested": [1, 2]},
        "local": {"profile": "default", "image": "x"},
        "limits": {"max_sessions": 2, "max_managed_processes": 9},
    }
    assert await box.call("box_init", data) == {"initialized": True}
    assert box.runtime.settings.max_sessions == 2
    await box.call("box_create_session", {"session_id": "a"})
    await box.call("box_create_session", {"session_id": "b"})
    with pytest.raises(BoxCapacityExceededError):
        await box.call("box_create_session", {"session_id": "c"})


async def test_init_rejects_bad_values_atomically(box: Box) -> None:
    with pytest.raises(BoxValidationError, match="backend"):
        await box.call("box_init", {"backend": "podman", "limits": {"max_sessions": 3}})
    assert box.runtime.settings.backend == "local"
    assert box.runtime.settings.max_sessions == 64


async def test_shutdown_drops_only_non_persistent_sessions(box: Box) -> None:
    a = await box.call("box_create_session", {"session_id": "a"})
    b = await box.call("box_create_session", {"session_id": "b"})
    p = await box.call("box_create_session", {"session_id": "p", "persistent": True})

    assert await box.call("box_shutdown") == {}

    assert [s["session_id"] for s in (await box.call("box_get_sessions"))["sessions"]] == ["p"]
    assert sorted(sid for sid, _ in box.fake.stopped) == sorted([a["backend_session_id"], b["backend_session_id"]])
    assert list(box.fake.live) == [p["backend_session_id"]]
    assert not box.fake.closed  # the daemon keeps serving
    assert (await box.call("box_exec", {"session_id": "a", "cmd": "true"}))["status"] == "completed"


# ── box_exec_stream ──────────────────────────────────────────────────────


async def test_exec_stream_yields_chunks_then_the_result(box: Box) -> None:
    # "é" straddles the first chunk boundary: its two bytes arrive in different chunks.
    stdout = b"x" * (CHUNK - 1) + "é".encode() + b"y" * 10 + b"\n"
    box.fake.results.append(Scripted(code=1, stdout=stdout, stderr=b"oops\n", wall_ms=9))

    items = await box.stream("box_exec_stream", {"session_id": "s1", "cmd": "run"})

    *chunks, last = items
    assert len(chunks) == 3
    assert all(c["kind"] == "output" and c["encoding"] == "utf-8" for c in chunks)
    assert "".join(c["data"] for c in chunks if c["stream"] == "stdout") == stdout.decode()
    assert chunks[0]["data"] == "x" * (CHUNK - 1)  # the split character is held back, not mangled
    assert [c["data"] for c in chunks if c["stream"] == "stderr"] == ["oops\n"]
    assert last["kind"] == "result"
    assert set(last) == {"kind", "result"}
    result = last["result"]
    assert result["session_id"] == "s1"
    assert result["status"] == "completed"
    assert result["exit_code"] == 1
    assert result["stdout"] == stdout.decode().strip()
    assert result["stderr"] == "oops"
    assert result["duration_ms"] == 9
    assert result["stdout_bytes"] == len(stdout)
    BoxExecutionResult.model_validate(result)


async def test_exec_stream_sends_binary_output_as_base64(box: Box) -> None:
    box.fake.results.append(Scripted(stdout=b"\xff\xfe\x00bin"))
    *chunks, last = await box.stream("box_exec_stream", {"session_id": "s1", "cmd": "cat blob"})
    assert [(c["stream"], c["encoding"]) for c in chunks] == [("stdout", "base64")]
    assert base64.b64decode(chunks[0]["data"]) == b"\xff\xfe\x00bin"
    assert last["result"]["stdout_bytes"] == 6


async def test_exec_stream_timeout_and_clipping(box: Box) -> None:
    box.fake.results.append(Scripted.timeout(stdout=b"z" * (OUTPUT_CAP_BYTES + 7)))
    *chunks, last = await box.stream("box_exec_stream", {"session_id": "s1", "cmd": "loop", "timeout_sec": 2})
    assert sum(len(c["data"]) for c in chunks) == OUTPUT_CAP_BYTES  # nothing past the cap is relayed
    result = last["result"]
    assert (result["status"], result["exit_code"]) == ("timed_out", None)
    assert result["stderr"] == "Command timed out after 2 seconds."
    assert result["stdout"].endswith(CLIP_MARKER.format(7))
    assert box.runtime.sessions.get("s1").handle.sandbox_id in box.fake.live


async def test_exec_stream_requires_a_command(box: Box) -> None:
    with pytest.raises(BoxValidationError, match=r"^cmd must not be empty$"):
        await box.stream("box_exec_stream", {"session_id": "s1", "cmd": ""})
    assert box.fake.starts() == 0


# ── close ────────────────────────────────────────────────────────────────


async def test_close_removes_every_session_including_persistent(box: Box) -> None:
    await box.call("box_create_session", {"session_id": "a"})
    await box.call("box_create_session", {"session_id": "p", "persistent": True})
    fake = box.fake

    await box.runtime.close()

    assert box.runtime.list_sessions() == []
    assert len(fake.stopped) == 2
    assert fake.live == {}
    assert ("remove_own", "") in fake.calls
    assert fake.closed
    assert not any(box.runtime.settings.data_dir.joinpath("instances").iterdir())  # instance lock released
    with pytest.raises(BoxRuntimeUnavailableError):
        await box.call("box_exec", {"session_id": "a", "cmd": "true"})
