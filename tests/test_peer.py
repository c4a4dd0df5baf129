"""The async ``Peer`` over an in-memory connection pair that still goes through real framing.

Each direction is a memory object stream of *bytes*: ``send`` runs the real envelope text
through ``encode_lines`` and the receiving side's ``StdioDecoder`` parses it back, exactly as
over a pipe. ``RawEnd`` is the other side without a Peer, for hand-built wire messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from boxruntime import errors
from boxruntime.errors import (
    ActionCallTimeoutError,
    BoxActionNotFoundError,
    BoxCapacityExceededError,
    BoxError,
    BoxSandboxError,
    BoxSessionNotFoundError,
    BoxValidationError,
    ConnectionClosedError,
)
from boxruntime.protocol.peer import Peer
from boxruntime.protocol.stdio_framing import CHUNK_BYTES, StdioDecoder, encode_lines

pytestmark = pytest.mark.anyio

LIMIT = 20  # seconds: a bound so a broken peer fails the test instead of hanging it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class MemoryConnection:
    """A ``Connection`` over memory streams that carries the real stdio wire bytes."""

    def __init__(self, out: MemoryObjectSendStream[bytes], inbound: MemoryObjectReceiveStream[bytes]) -> None:
        self._out = out
        self._in = inbound
        self._decoder = StdioDecoder()
        self._pending: list[dict[str, Any]] = []
        self.sent: list[str] = []

    async def receive(self) -> dict[str, Any] | None:
        while not self._pending:
            try:
                data = await self._in.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def send(self, text: str) -> None:
        wire = b"".join(encode_lines(text))  # may raise ValueError, like the real connections
        self.sent.append(text)
        try:
            await self._out.send(wire)  # one item per message: chunk lines never interleave
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionClosedError("memory connection closed") from exc

    async def close(self) -> None:
        await self._out.aclose()


def connection_pair() -> tuple[MemoryConnection, MemoryConnection]:
    a_to_b, b_from_a = anyio.create_memory_object_stream[bytes](1000)
    b_to_a, a_from_b = anyio.create_memory_object_stream[bytes](1000)
    return MemoryConnection(a_to_b, a_from_b), MemoryConnection(b_to_a, b_from_a)


class RawEnd:
    """The far side of a connection, speaking hand-built JSON."""

    def __init__(self, conn: MemoryConnection) -> None:
        self.conn = conn

    async def send(self, obj: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(obj))

    async def receive(self) -> dict[str, Any]:
        obj = await self.conn.receive()
        assert obj is not None
        return obj


async def _echo(data: dict[str, Any]) -> dict[str, Any]:
    return {"echo": data}


@contextlib.asynccontextmanager
async def serving(actions: dict[str, Any] | None = None) -> AsyncIterator[tuple[Peer, RawEnd, anyio.abc.TaskGroup]]:
    """A peer serving ``actions`` in a task group, and the raw far end of its connection."""
    peer_conn, raw_conn = connection_pair()
    peer = Peer(peer_conn, actions)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            yield peer, RawEnd(raw_conn), tg


# ── calls and responses ───────────────────────────────────────────────────


async def test_call_round_trip_over_real_framing() -> None:
    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"echo": _echo}, name="server")
    client = Peer(client_conn, name="client")
    big = {"text": "héllo wörld 😀 " * 5000}  # > 16 KiB: goes over the wire in chunks
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            assert await client.call("echo", {"x": 1}) == {"echo": {"x": 1}}
            assert await client.call("echo", big) == {"echo": big}
            assert await client.call("__ping", {}) == {}
            tg.cancel_scope.cancel()
    assert any(len(text) > CHUNK_BYTES for text in server_conn.sent)
    # Every frame is LangBot's envelope and pure ASCII (json.dumps defaults).
    for text in server_conn.sent + client_conn.sent:
        assert text.isascii()
        obj = json.loads(text)
        assert set(obj) in (
            {"seq_id", "action", "data"},
            {"seq_id", "code", "message", "data", "chunk_status"},
        )


async def test_many_concurrent_calls_answered_out_of_order() -> None:
    count = 40
    gates = [anyio.Event() for _ in range(count)]
    results: dict[int, dict[str, Any]] = {}
    done = [anyio.Event() for _ in range(count)]

    async def gated(data: dict[str, Any]) -> dict[str, Any]:
        await gates[data["i"]].wait()
        return {"i": data["i"], "square": data["i"] ** 2}

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"gated": gated})
    client = Peer(client_conn)

    async def one(i: int) -> None:
        results[i] = await client.call("gated", {"i": i}, timeout=LIMIT)
        done[i].set()

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            async with anyio.create_task_group() as calls:
                for i in range(count):
                    calls.start_soon(one, i)
                # Answer strictly in reverse order of calling.
                for i in reversed(range(count)):
                    gates[i].set()
                    await done[i].wait()
            tg.cancel_scope.cancel()
    assert results == {i: {"i": i, "square": i * i} for i in range(count)}
    seq_ids = [json.loads(text)["seq_id"] for text in client_conn.sent]
    assert len(set(seq_ids)) == count


WIRE_ERRORS = [
    BoxSessionNotFoundError,
    BoxValidationError,
    BoxCapacityExceededError,
    BoxSandboxError,
    errors.BoxSessionConflictError,
    errors.BoxManagedProcessNotFoundError,
    errors.BoxManagedProcessConflictError,
    errors.BoxBackendUnavailableError,
    errors.BoxRuntimeUnavailableError,
    BoxError,
]


@pytest.mark.parametrize("cls", WIRE_ERRORS, ids=lambda cls: cls.__name__)
async def test_typed_errors_come_back_as_the_same_class(cls: type[BoxError]) -> None:
    async def failing(data: dict[str, Any]) -> dict[str, Any]:
        raise cls(f"session {data['id']} not found")

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"fail": failing})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(BoxError) as info:
                await client.call("fail", {"id": "s1"})
            tg.cancel_scope.cancel()
    assert type(info.value) is cls
    assert "session s1 not found" in str(info.value)
    reply = json.loads(server_conn.sent[-1])
    assert reply["code"] == 1
    assert reply["message"] == f"{cls.__name__}: session s1 not found"
    assert reply["data"] == {}


async def test_unexpected_exception_becomes_an_error_reply() -> None:
    async def broken(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("session_id")

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"broken": broken})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(errors.ActionCallError, match="KeyError: 'session_id'"):
                await client.call("broken", {})
            # The server keeps serving after a handler blew up.
            assert await client.call("__ping", {}) == {}
            tg.cancel_scope.cancel()


async def test_unknown_action_is_action_not_found() -> None:
    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"echo": _echo})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(BoxActionNotFoundError, match="box_nope"):
                await client.call("box_nope", {})
            tg.cancel_scope.cancel()


async def test_bad_request_gets_a_validation_error_reply() -> None:
    async with serving({"echo": _echo}) as (_, raw, tg):
        await raw.send({"seq_id": 77, "action": "echo"})  # no data
        reply = await raw.receive()
        await raw.send({"seq_id": 78, "action": "echo", "data": [1, 2]})
        reply2 = await raw.receive()
        # Junk that is neither request nor response is ignored; the next request is served.
        await raw.send({"hello": "there"})
        await raw.send({"seq_id": 79, "action": "echo", "data": {"ok": 1}})
        reply3 = await raw.receive()
        tg.cancel_scope.cancel()
    assert reply["seq_id"] == 77
    assert reply["code"] == 1
    assert reply["message"].startswith("BoxValidationError: ")
    assert reply["data"] == {}
    assert reply["chunk_status"] == "continue"
    assert (reply2["seq_id"], reply2["code"]) == (78, 1)
    assert reply2["message"].startswith("BoxValidationError: ")
    assert reply3 == {
        "seq_id": 79,
        "code": 0,
        "message": "success",
        "data": {"echo": {"ok": 1}},
        "chunk_status": "continue",
    }


async def test_caller_timeout_raises_and_a_late_answer_is_dropped() -> None:
    release = anyio.Event()
    started = anyio.Event()

    async def slow(_: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"late": True}

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"slow": slow})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(ActionCallTimeoutError, match="slow"):
                await client.call("slow", {}, timeout=0.05)
            assert started.is_set()
            release.set()
            # The late answer has no caller any more; later calls are unaffected.
            assert await client.call("__ping", {}) == {}
            assert not client.closed
            tg.cancel_scope.cancel()


# ── streaming ─────────────────────────────────────────────────────────────


async def test_streaming_handler_yields_each_chunk_then_ends() -> None:
    async def count(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for i in range(data["n"]):
            yield {"i": i, "pad": "x" * (i * 5000)}

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"count": count})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            chunks = [chunk async for chunk in client.call_stream("count", {"n": 6})]
            empty = [chunk async for chunk in client.call_stream("count", {"n": 0})]
            tg.cancel_scope.cancel()
    assert chunks == [{"i": i, "pad": "x" * (i * 5000)} for i in range(6)]
    assert empty == []
    wire = [json.loads(text) for text in server_conn.sent]
    first_stream = [m for m in wire if m["seq_id"] == wire[0]["seq_id"]]
    assert [m["chunk_status"] for m in first_stream] == ["continue"] * 6 + ["end"]
    assert first_stream[-1]["data"] == {}
    assert all(m["code"] == 0 for m in first_stream)


async def test_error_mid_stream_raises_after_the_chunks_before_it() -> None:
    async def flaky(_: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"i": 0}
        yield {"i": 1}
        raise BoxSandboxError("agent lost")

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"flaky": flaky})
    client = Peer(client_conn)
    received: list[dict[str, Any]] = []
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(BoxSandboxError, match="agent lost"):
                async for chunk in client.call_stream("flaky", {}):
                    received.append(chunk)
            tg.cancel_scope.cancel()
    assert received == [{"i": 0}, {"i": 1}]


# ── capacity ──────────────────────────────────────────────────────────────


async def test_concurrency_cap_refuses_the_extra_call_but_still_answers_ping() -> None:
    cap = 4
    release = anyio.Event()
    all_started = anyio.Event()
    started = 0

    async def blocked(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal started
        started += 1
        if started == cap:
            all_started.set()
        await release.wait()
        return {"i": data["i"]}

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"blocked": blocked}, max_inflight=cap)
    client = Peer(client_conn)
    results: list[dict[str, Any]] = []

    async def one(i: int) -> None:
        results.append(await client.call("blocked", {"i": i}, timeout=LIMIT))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            async with anyio.create_task_group() as calls:
                for i in range(cap):
                    calls.start_soon(one, i)
                await all_started.wait()
                # Every slot is held: the next call is refused while they are still blocked.
                with pytest.raises(BoxCapacityExceededError, match=f"max {cap} concurrent"):
                    await client.call("blocked", {"i": 99})
                with pytest.raises(BoxCapacityExceededError):
                    await client.call("echo-not-registered", {})
                # The heartbeat is exempt.
                assert await client.call("__ping", {}) == {}
                assert not release.is_set()
                release.set()
            # Slots are freed once handlers finish.
            assert await client.call("blocked", {"i": 100}) == {"i": 100}
            tg.cancel_scope.cancel()
    assert sorted(r["i"] for r in results) == list(range(cap))
    assert started == cap + 1


# ── the peer going away ───────────────────────────────────────────────────


async def test_peer_closing_fails_pending_calls_and_cancels_handlers() -> None:
    handler_started = anyio.Event()
    handler_cancelled = anyio.Event()

    async def forever(_: dict[str, Any]) -> dict[str, Any]:
        handler_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            handler_cancelled.set()
            raise
        return {}

    outcome: list[BaseException] = []

    async def pending_call(peer: Peer) -> None:
        try:
            await peer.call("never_answered", {}, timeout=LIMIT)
        except BaseException as exc:
            outcome.append(exc)

    async with serving({"forever": forever}) as (peer, raw, tg):
        await raw.send({"seq_id": 1, "action": "forever", "data": {}})
        await handler_started.wait()
        tg.start_soon(pending_call, peer)
        request = await raw.receive()  # the peer's call reached us; we never answer it
        assert request["action"] == "never_answered"
        await raw.conn.close()  # EOF: the peer's receive() returns None
        await peer.wait_closed()
    assert handler_cancelled.is_set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)
    assert peer.closed
    with pytest.raises(ConnectionClosedError):
        await peer.call("__ping", {})


async def test_cancelling_the_peer_cancels_its_handlers_before_run_returns() -> None:
    """A daemon shutting down cancels each connection's run(): no handler may outlive it."""
    handler_started = anyio.Event()
    handler_finished: list[str] = []

    async def forever(_: dict[str, Any]) -> dict[str, Any]:
        handler_started.set()
        try:
            await anyio.sleep_forever()
        finally:
            handler_finished.append("cancelled")
        return {}

    async with serving({"forever": forever}) as (peer, raw, tg):
        await raw.send({"seq_id": 1, "action": "forever", "data": {}})
        await raw.send({"seq_id": 2, "action": "forever", "data": {}})
        await handler_started.wait()
        await anyio.sleep(0.01)  # let the second handler start too
        tg.cancel_scope.cancel()
    assert handler_finished == ["cancelled", "cancelled"]
    assert peer.closed


async def test_a_shielded_cleanup_finishes_when_the_peer_goes_away() -> None:
    """Handlers shield what must not be cut short (removing a sandbox); a peer that disconnects
    cancels the handler, but never through its shield."""
    in_shield = anyio.Event()
    steps: list[str] = []

    async def remove(_: dict[str, Any]) -> dict[str, Any]:
        with anyio.CancelScope(shield=True):
            in_shield.set()
            await anyio.sleep(0.2)
            steps.append("cleanup finished")
        await anyio.sleep_forever()  # cancelled here, after the shield
        return {}

    async with serving({"remove": remove}) as (peer, raw, _):
        await raw.send({"seq_id": 1, "action": "remove", "data": {}})
        await in_shield.wait()
        await raw.conn.close()
        await peer.wait_closed()
    assert steps == ["cleanup finished"]


async def test_stream_caller_fails_when_the_peer_goes_away() -> None:
    first_sent = anyio.Event()

    got: list[dict[str, Any]] = []
    outcome: list[BaseException] = []

    async def consume(peer: Peer) -> None:
        try:
            async for chunk in peer.call_stream("tail", {}, timeout=LIMIT):
                got.append(chunk)
                first_sent.set()
        except BaseException as exc:
            outcome.append(exc)

    async with serving() as (peer, raw, tg):
        tg.start_soon(consume, peer)
        req = await raw.receive()
        await raw.send(
            {"seq_id": req["seq_id"], "code": 0, "message": "success", "data": {"n": 1}, "chunk_status": "continue"}
        )
        await first_sent.wait()
        await raw.conn.close()
    assert got == [{"n": 1}]
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosedError)


async def test_handler_losing_an_unrelated_connection_still_gets_an_error_reply() -> None:
    # A handler that proxies to something else (the in-sandbox agent, another peer) may see
    # *that* connection close. The caller's own connection is fine, so it must get an answer
    # rather than wait for its timeout.
    async def proxy(_: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionClosedError("agent connection closed")

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"proxy": proxy})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            with pytest.raises(BoxError) as info:
                await client.call("proxy", {}, timeout=2)
            tg.cancel_scope.cancel()
    assert not isinstance(info.value, ActionCallTimeoutError)
    assert "agent connection closed" in str(info.value)


async def test_a_stream_abandoned_by_its_reader_is_cancelled_on_the_other_side() -> None:
    stopped = anyio.Event()

    async def endless(_: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            i = 0
            while True:
                yield {"i": i}
                i += 1
                await anyio.sleep(0.01)
        finally:
            stopped.set()  # the producer learns it was cancelled (an exec stream kills its command)

    server_conn, client_conn = connection_pair()
    server = Peer(server_conn, {"endless": endless})
    client = Peer(client_conn)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            stream = client.call_stream("endless", {})
            first = [await anext(stream) for _ in range(3)]
            await stream.aclose()  # the reader walks away without reading to the end
            await stopped.wait()
            assert await client.call("__cancel_action", {"seq_id": 424242}) == {"cancelled": False}
            tg.cancel_scope.cancel()
    assert first == [{"i": 0}, {"i": 1}, {"i": 2}]
    cancels = [json.loads(t) for t in client_conn.sent if json.loads(t).get("action") == "__cancel_action"]
    assert cancels[0]["data"]["seq_id"] == json.loads(client_conn.sent[0])["seq_id"]
