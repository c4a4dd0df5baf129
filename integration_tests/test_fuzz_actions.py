"""A property-based fuzz of the whole action catalogue against a real daemon (issue 16, hardening).

For every action: any JSON object as ``data``, and the action's own request with fields swapped
for nasty values (huge and negative numbers, NaN, long strings, lone surrogates, NUL, control
characters, paths that climb or name devices, wrong types). Each request must be answered within
two seconds, by a Box error (a wire name from ``boxruntime.errors``, never an untyped one or the
action table's "internal error") or by a valid answer; and the session under fire must keep its
work: a command streaming ticks in flight on another connection, and a managed ``cat``.

Hypothesis is seeded (``derandomize``) and bounded, so CI runs the same examples each time.
Requests that end sessions on purpose (delete, shutdown, stop) are pointed at other sessions:
those ends are the protocol's, not what the property is about.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boxruntime.errors import ActionCallError, BoxError
from boxruntime.models import actions as a
from boxruntime.models.action_kinds import Action, Streamed
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect, sandboxes_of, start_daemon

REPLY_WITHIN_SEC = 2.0
EXAMPLES_PER_ACTION = {"nsjail": 10, "docker": 5, "gvisor": 3}  # x 41 actions
SESSION = "fz"  # the session under fire
OTHER_SESSIONS = ("fz-a", "fz-b")
PROCESS = "fz-cat"
# Actions whose purpose is to end sessions or processes: aimed elsewhere than the session under
# fire (and box_shutdown spares it: it is persistent).
ENDERS = {a.DELETE_SESSION.name, a.STOP_PROCESS.name}

# ── nasty values ─────────────────────────────────────────────────────────

NASTY_STRINGS = [
    "",
    " ",
    "x" * 300,
    "ab/" * 1500,
    "x" * (300 << 10),
    "x" * (2 << 20),  # more than one agent frame's header holds
    "a\udc80b",
    "\ud800",
    "a\0b",
    "\x01\x02\x1b[31m",
    "\n",
    "é" * 200,
    "💥" * 70,
    ".",
    "..",
    "/",
    "../../../../etc/passwd",
    "/proc/1/mem",
    "/proc/self/environ",
    "/dev/zero",
    "/run/boxruntime/agent.sock",
    "/tmp",
    "/workspace",
    "$(id)",
    "INVALID::ref",
    "Upper/Case:tag",
    "a" * 300 + ":latest",
    "NaN",
    "-1",
]
NASTY_NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63), 2**70, 0.5, -0.0, 1e308, 1e-9]
NASTY_NUMBERS += [float("inf"), float("-inf"), float("nan")]
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
NASTY = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.sampled_from(NASTY_NUMBERS),
    ANY_JSON,
    st.text(max_size=30),
)

# ── valid requests, aimed mostly at the session under fire ───────────────

HARMLESS = [
    "true",
    "echo hi",
    "exit 3",
    "echo err >&2",
    "cat /dev/null",
    'printf "%s" "$A"',
    "ls -la",
    "pwd",
    "sleep 0.2",
    "head -c 200000 /dev/zero | wc -c",
]
# Commands are never drawn as free text: "kill -9 -1" is a user's own choice, not an input the
# daemon must survive. Nasty text reaches the shell quoted, as data.
COMMAND = st.one_of(
    st.sampled_from(HARMLESS),
    st.sampled_from(NASTY_STRINGS).map(lambda s: "printf %s " + shlex.quote(s.replace("\0", ""))),
)
# A week is the longest allowed; a month and 2^31 s are past what the agent's timer can wait.
TIMEOUT = st.sampled_from([1, 5, 7 * 24 * 3600, 30 * 24 * 3600, 2**31])
SESSION_ID = st.sampled_from([SESSION, SESSION, SESSION, *OTHER_SESSIONS])
# The session under fire's identity: requests that keep it run in it (others conflict, typed).
SPEC = {"persistent": True, "memory_mb": 256}
PATH = st.one_of(st.sampled_from(["f.txt", "dir/g.bin", ".", "/tmp/x", "sub/../f.txt"]), st.sampled_from(NASTY_STRINGS))


def grant(revision: int) -> dict[str, Any]:
    return {
        "instance_uuid": "fuzz-instance",
        "workspace_uuid": "fuzz-ws",
        "execution_generation": 1,
        "entitlement_revision": revision,
        "expires_at": "2030-01-01T00:00:00+00:00",
        "max_sessions": 1,
        "max_managed_processes": 0,
    }


@st.composite
def valid_request(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A request of ``name`` that its model accepts (most of the time)."""
    sid = draw(SESSION_ID)
    exec_spec = {**SPEC, "session_id": sid, "cmd": draw(COMMAND), "env": {"A": draw(st.sampled_from(NASTY_STRINGS))}}
    requests: dict[str, Any] = {
        a.EXEC.name: {**exec_spec, "timeout_sec": draw(TIMEOUT)},
        a.EXEC_STREAM.name: {**exec_spec, "timeout_sec": draw(TIMEOUT)},
        a.EXEC_INTERACTIVE.name: {**exec_spec, "tty": {"rows": 24, "cols": 80}, "stdin": draw(st.booleans())},
        a.EXEC_INPUT.name: {"exec_id": draw(st.text(max_size=20)), "data": "aGk=", "eof": True},
        a.EXEC_RESIZE.name: {"exec_id": draw(st.text(max_size=20)), "rows": 10, "cols": 10},
        a.EXEC_SIGNAL.name: {"exec_id": draw(st.text(max_size=20)), "signal": 9},
        a.CREATE_SESSION.name: {**SPEC, "session_id": sid},
        a.GET_SESSION.name: {"session_id": sid},
        a.DELETE_SESSION.name: {"session_id": sid},
        a.START_PROCESS.name: {
            "session_id": sid,
            "spec": {
                "process_id": draw(st.sampled_from([PROCESS, "p1", "p2"])),
                "command": draw(st.sampled_from(["cat", "true", "echo", "sleep"])),
                "args": draw(st.lists(st.sampled_from(NASTY_STRINGS[:12]), max_size=3)),
            },
        },
        a.GET_PROCESS.name: {"session_id": sid, "process_id": draw(st.sampled_from([PROCESS, "p1"]))},
        a.STOP_PROCESS.name: {"session_id": sid, "process_id": draw(st.sampled_from([PROCESS, "p1"]))},
        a.FS_READ.name: {"session_id": sid, "path": draw(PATH), "offset": draw(st.integers(0, 10**6))},
        a.FS_WRITE.name: {"session_id": sid, "path": draw(PATH), "data": draw(st.text(max_size=100))},
        a.FS_LIST.name: {"session_id": sid, "path": draw(PATH), "recursive": draw(st.booleans())},
        a.FS_STAT.name: {"session_id": sid, "path": draw(PATH)},
        a.FS_REMOVE.name: {"session_id": sid, "path": draw(PATH), "recursive": draw(st.booleans())},
        a.GET_SKILL.name: {"name": "sk"},
        a.CREATE_SKILL.name: {"skill": {"name": draw(st.sampled_from(["sk", "sk2"])), "description": "d"}},
        a.UPDATE_SKILL.name: {"name": "sk", "skill": {"description": "d2"}},
        a.DELETE_SKILL.name: {"name": draw(st.sampled_from(["sk", "sk2"]))},
        a.SCAN_SKILL_DIRECTORY.name: {"path": draw(PATH)},
        a.LIST_SKILL_FILES.name: {"name": "sk", "path": draw(PATH)},
        a.READ_SKILL_FILE.name: {"name": "sk", "path": draw(PATH)},
        a.WRITE_SKILL_FILE.name: {"name": "sk", "path": draw(PATH), "content": "x"},
        a.PREVIEW_SKILL_ZIP.name: {"file_key": "k.zip"},
        a.INSTALL_SKILL_ZIP.name: {"file_key": "k.zip", "source_paths": [draw(PATH)]},
        a.FILE_CHUNK.name: {"file_key": "k.zip", "chunk_base64": "UEsFBg==", "chunk_index": 0, "chunk_amount": 1},
        a.UPSERT_ADMISSION_GRANT.name: grant(draw(st.integers(1, 5))),
        a.REVOKE_ADMISSION_GRANT.name: {k: grant(1)[k] for k in ("instance_uuid", "workspace_uuid")}
        | {"entitlement_revision": draw(st.integers(1, 5))},
        a.VERIFY_SHARED_WORKSPACE.name: {"marker_name": draw(PATH)},
    }
    return requests.get(name, {})


def paths_of(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from paths_of(value, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """The action's valid request with up to three fields set to nasty values."""
    data = draw(valid_request(name))
    paths = list(paths_of(data))
    for _ in range(draw(st.integers(0 if paths else 1, 3))):
        if paths and draw(st.booleans()):
            path = draw(st.sampled_from(paths))
        else:
            path = (draw(st.sampled_from(["session_id", "path", "cmd", "env", "timeout_sec", "unknown"])),)
        target: Any = data
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                break
            target = target[key]
        else:
            target[path[-1]] = draw(NASTY)
    return data


def request_of(action: Action) -> st.SearchStrategy[dict[str, Any]]:
    """Any JSON object, the action's valid request, or that request made nasty."""

    def aimed(data: dict[str, Any]) -> dict[str, Any]:
        if action.name in ENDERS and data.get("session_id") == SESSION:
            data["session_id"] = OTHER_SESSIONS[0]
        spec = data.get("spec")
        if action is a.START_PROCESS and isinstance(spec, dict) and spec.get("process_id") == PROCESS:
            spec["process_id"] = "p1"  # the same id replaces the process, as LangBot's does
        return data

    return st.one_of(
        st.dictionaries(st.text(max_size=12), ANY_JSON, max_size=5),
        valid_request(action.name),
        mutated(action.name),
    ).map(aimed)


# ── the daemon, the session under fire and its work ──────────────────────


@dataclass
class Fire:
    """The daemon, a client connection, and what must survive in the session under fire."""

    daemon: Daemon
    portal: BlockingPortal
    peer: Peer
    sandbox: str = ""
    cat_started_at: str = ""
    ticks: int = 0
    last_tick: float = 0.0
    tick_error: BaseException | None = None
    seen: dict[str, int] = field(default_factory=dict)  # outcome -> count


async def stream_ticks(fire: Fire, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """The command in flight: on its own connection, printing a tick every 50 ms."""
    ticking = {**SPEC, "session_id": SESSION, "cmd": "while :; do echo tick; sleep 0.05; done", "timeout_sec": 3600}
    try:
        async with connect(fire.daemon) as peer:
            started = False
            async for item in peer.call_stream("box_exec_stream", ticking, timeout=60):
                fire.ticks += item.get("data", "").count("tick")
                fire.last_tick = time.monotonic()
                if not started:
                    started = True
                    task_status.started()
            raise AssertionError("the command in flight ended")
    except BaseException as exc:
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            fire.tick_error = exc
        raise


async def answer(peer: Peer, action: Action, data: dict[str, Any]) -> str:
    """Send the request; the outcome: "ok" or the error's wire name. Fails on a slow reply, an
    untyped error, or an answer the action's model does not read."""
    with anyio.fail_after(REPLY_WITHIN_SEC):
        try:
            if isinstance(action, Streamed):
                stream = peer.call_stream(action.name, data, timeout=REPLY_WITHIN_SEC)
                try:
                    action.items.parse(await anext(stream))  # the first item is the reply
                except StopAsyncIteration:
                    pass
                finally:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()  # the rest is not waited for: cancelled
            else:
                action.response.parse(await peer.call(action.name, data, timeout=REPLY_WITHIN_SEC))
        except BoxError as exc:
            # The client rebuilds a Box error by its wire name (boxruntime.errors); any other
            # name comes back as ActionCallError.
            assert not isinstance(exc, ActionCallError), f"{action.name} answered an untyped error: {exc}"
            assert "internal error" not in str(exc), f"{action.name}: {exc}"
            return type(exc).__name__
    return "ok"


async def check_unharmed(fire: Fire) -> None:
    assert fire.tick_error is None, f"the command in flight failed: {fire.tick_error!r}"
    with anyio.fail_after(REPLY_WITHIN_SEC):
        while time.monotonic() - fire.last_tick > 1.0:  # noqa: ASYNC110 - ticks arrive on another task
            await anyio.sleep(0.02)
        session = await fire.peer.call("box_get_session", {"session_id": SESSION})
    assert session["backend_session_id"] == fire.sandbox
    cat = session["managed_processes"][PROCESS]
    assert cat["status"] == "running" and cat["started_at"] == fire.cat_started_at


async def relay_round_trip(daemon: Daemon) -> None:
    url = f"{daemon.http}/v1/sessions/{SESSION}/managed-process/{PROCESS}/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mcp",)) as ws:
        await ws.send_str("still here")
        msg = await ws.receive(timeout=10)
        assert msg.data == "still here"


@contextlib.asynccontextmanager
async def under_fire(daemon: Daemon, fire_box: list[Fire], portal: BlockingPortal) -> AsyncIterator[None]:
    async with connect(daemon) as peer:
        await peer.call("box_create_session", {**SPEC, "session_id": SESSION}, timeout=120)
        for path in ("f.txt", "dir/g.bin"):  # something for the file actions to find
            await peer.call("box_fs_write", {"session_id": SESSION, "path": path, "data": "data"}, timeout=60)
        spec = {"process_id": PROCESS, "command": "cat"}
        cat = await peer.call("box_start_managed_process", {"session_id": SESSION, "spec": spec}, timeout=60)
        session = await peer.call("box_get_session", {"session_id": SESSION})
        fire = Fire(daemon, portal, peer, session["backend_session_id"], cat["started_at"])
        async with anyio.create_task_group() as tg:
            await tg.start(stream_ticks, fire)
            fire_box.append(fire)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()


@pytest.fixture(scope="module", params=["nsjail", "docker", "gvisor"])
def fire(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fire]:
    backend = str(request.param)
    if backend in ("docker", "gvisor"):
        request.getfixturevalue("docker_engine")
    data_dir = tmp_path_factory.mktemp(f"fuzz-{backend}") / "data"
    env = {"BOXRUNTIME_MAX_SESSIONS": "4"}
    daemon = start_daemon(data_dir, "--backend", backend, env=env)
    daemon.extra["backend"] = backend
    try:
        with start_blocking_portal("asyncio") as portal:
            fires: list[Fire] = []
            with portal.wrap_async_context_manager(under_fire(daemon, fires, portal)):
                yield fires[0]
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


def fuzz(fire: Fire, action: Action) -> Callable[[dict[str, Any]], None]:
    """One example: the request's outcome is counted, and the session under fire checked."""

    def one(data: dict[str, Any]) -> None:
        outcome = fire.portal.call(answer, fire.peer, action, data)
        key = f"{action.name}: {outcome}"
        fire.seen[key] = fire.seen.get(key, 0) + 1
        fire.portal.call(check_unharmed, fire)

    return one


def test_every_action_answers_any_input_fast_and_typed_and_hurts_nothing_else(fire: Fire) -> None:
    backend = str(fire.daemon.extra["backend"])
    examples = settings(
        max_examples=EXAMPLES_PER_ACTION[backend],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    failures: dict[str, str] = {}
    for action in a.ACTIONS:  # each action its share: hypothesis would not spread them evenly
        try:
            examples(given(data=request_of(action))(fuzz(fire, action)))()
        except Exception as exc:  # every action is fuzzed; all that failed are reported below
            failures[action.name] = f"{type(exc).__name__}: {exc}"[:3000]
            if fire.tick_error is not None or fire.daemon.proc.poll() is not None:
                break  # the session under fire (or the daemon) is gone: the rest would say only that
    assert not failures, "\n\n".join(f"{name}: {text}" for name, text in failures.items())
    fire.portal.call(relay_round_trip, fire.daemon)
    fire.portal.call(check_unharmed, fire)
    log = fire.daemon.log()
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]
    assert fire.daemon.proc.poll() is None
    print(f"\n{backend}: {sum(fire.seen.values())} requests, {fire.ticks} ticks in flight meanwhile")
    print(json.dumps(dict(sorted(fire.seen.items())), indent=1))
