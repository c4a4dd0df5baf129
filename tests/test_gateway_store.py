"""The gateway's SQLite store on a real file: dedup that survives a reopen, files stored with
their message, a turn completed atomically, outbox transitions, history kept by whole turns,
pruning, and group commit (many callers, few commits, one failure isolated)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

from langbot_bridge.gateway.messages import ChatRef, Inbound, InboundFile, Outbound
from langbot_bridge.gateway.store import HistoryCaps, ReplyPart, Retention, Store, TurnAlreadyCompleted, out_file

pytestmark = pytest.mark.anyio

CHAT = ChatRef(channel="wb", account="robot", chat_type="person", chat_id="alice", user_id="alice")
CAPS = HistoryCaps(max_messages=6, max_chars=10_000)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def inbound(message_id: str, chat: ChatRef = CHAT, **fields: object) -> Inbound:
    return Inbound(chat=chat, message_id=message_id, text=f"text of {message_id}", **fields)  # type: ignore[arg-type]


def text_reply(store: Store, inbox_id: int | None, text: str, position: int = 0, chat: ChatRef = CHAT) -> ReplyPart:
    return ReplyPart(Outbound(chat=chat, text=text, idempotency_key=store.idempotency_key(inbox_id, position)))


async def opened(path: Path) -> Store:
    store = Store(path)
    await store.open()
    return store


async def test_a_message_is_claimed_once_even_after_a_reopen(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    first = await store.claim(inbound("m1"))
    assert first.inbox_id is not None and not first.duplicate
    again = await store.claim(inbound("m1"))
    assert again.duplicate and again.state == "pending"
    other_account = inbound("m1", CHAT.model_copy(update={"account": "robot-2"}))
    assert not (await store.claim(other_account)).duplicate  # the key is (channel, account, id)
    salt = store.salt
    await store.close()
    reopened = await opened(tmp_path / "gw.sqlite3")
    assert (await reopened.claim(inbound("m1"))).duplicate
    assert reopened.salt == salt  # idempotency keys stay stable across restarts
    assert [row.inbound.chat.key for row in await reopened.pending_inbox()] == [CHAT.key, other_account.chat.key]
    await reopened.close()


async def test_files_are_stored_with_their_message(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    data = bytes(range(256)) * 4096
    message = inbound("m1", files=[InboundFile(name="../../etc/pic.png", mime_type="image/png", size=len(data))])
    assert message.files[0].name == "pic.png"  # never a path
    claim = await store.claim(message, [data])
    assert claim.inbox_id is not None
    assert await store.inbox_files(claim.inbox_id) == [data]
    with pytest.raises(ValueError, match="one byte string per declared file"):
        await store.claim(inbound("m2", files=message.files))
    await store.close()


async def test_completing_a_turn_queues_its_reply_once(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    claim = await store.claim(inbound("m1"), [])
    assert claim.inbox_id is not None
    blob = b"\x00file" * 1000
    parts = [
        text_reply(store, claim.inbox_id, "hello", 0),
        ReplyPart(
            Outbound(
                chat=CHAT,
                file=out_file("a.bin", "application/octet-stream", blob),
                sequence=2,
                idempotency_key=store.idempotency_key(claim.inbox_id, 1),
            ),
            blob,
        ),
    ]
    queued = await store.complete_turn(claim.inbox_id, CHAT.key, parts, [{"role": "user", "content": "x"}], CAPS)
    with pytest.raises(TurnAlreadyCompleted, match="completed already"):
        await store.complete_turn(claim.inbox_id, CHAT.key, parts, None, CAPS)
    rows = await store.pending_outbox()
    assert rows == queued and [r.outbound.text for r in rows] == ["hello", ""]
    assert await store.pending_inbox() == []
    file_row = rows[1]
    assert await store.outbox_file(file_row.id) == blob
    found = await store.file_by_token(file_row.outbound.file.token)  # type: ignore[union-attr]
    assert found is not None and found[1] == blob
    assert await store.file_by_token("no-such-token") is None
    assert (await store.counts())["wb"] == {"inbox_done": 1, "outbox_pending": 2, "known_chats": 1}
    await store.close()


async def test_outbox_rows_move_through_their_states(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    await store.enqueue(
        [text_reply(store, None, "a"), text_reply(store, None, "b", 1), text_reply(store, None, "c", 2)]
    )
    a, b, c = await store.pending_outbox()
    await store.mark_retry(a.id, 1, time.time() + 60, "HTTP 503")
    assert (await store.pending_outbox())[0].attempts == 1
    await store.mark_sent(a.id, 2, "msg-a", confirmed=False)  # awaiting the platform's result
    await store.mark_sent(b.id, 1, "msg-b", confirmed=False)
    await store.mark_dead(c.id, 3, "refused")
    delivered = await store.delivery_result("wb", "msg-a", None, retry=False, max_attempts=5)
    assert delivered is not None and (delivered.chat_key, delivered.state, delivered.row) == (
        CHAT.key,
        "delivered",
        None,
    )
    assert await store.delivery_result("wb", "msg-a", None, retry=False, max_attempts=5) is None  # only once
    again = await store.delivery_result("wb", "msg-b", "failed on the phone", retry=True, max_attempts=5)
    assert again is not None and again.state == "pending" and again.row is not None
    assert [row.id for row in await store.pending_outbox()] == [again.row.id] == [b.id]  # to be sent again
    assert await store.delivery_result("wb", "unknown", None, retry=False, max_attempts=5) is None
    (dead,) = await store.dead_letters()
    assert (dead["id"], dead["error"], dead["attempts"]) == (c.id, "refused", 3)
    await store.close()


async def test_history_keeps_whole_recent_turns_within_its_caps(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    for turn in range(5):
        claim = await store.claim(inbound(f"m{turn}"))
        assert claim.inbox_id is not None
        messages = [
            {"role": "user", "content": f"q{turn}"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"c{turn}"}]},
            {"role": "tool", "tool_call_id": f"c{turn}", "content": "r"},
        ][: 2 + turn % 2]
        await store.complete_turn(claim.inbox_id, CHAT.key, [], messages, CAPS)
    history = await store.history(CHAT.key)
    assert len(history) <= CAPS.max_messages
    assert history[0]["role"] == "user"  # never starts inside a turn
    assert history[-2:] == [
        {"role": "user", "content": "q4"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c4"}]},
    ]
    await store.close()


async def test_pruning_forgets_only_what_no_redelivery_needs(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    old = await store.claim(inbound("old"))
    assert old.inbox_id is not None
    await store.complete_turn(old.inbox_id, CHAT.key, [], None, CAPS)
    await store.claim(inbound("waiting"))
    await store.db.run(lambda conn: conn.execute("UPDATE inbox SET done_at = done_at - 7200 WHERE state='done'"))
    removed = await store.prune(Retention(dedup_sec=3600, dead_letter_sec=3600, file_url_sec=3600))
    assert removed == 1
    assert not (await store.claim(inbound("old"))).duplicate  # forgotten after its retention
    assert (await store.claim(inbound("waiting"))).duplicate  # a pending message is never pruned
    await store.close()


async def test_concurrent_operations_share_commits_and_fail_alone(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    before = store.db.batches
    failures: list[BaseException] = []

    async def claim(n: int) -> None:
        await store.claim(inbound(f"burst-{n}"))

    async def broken() -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'written')")
            raise RuntimeError("boom")

        try:
            await store.db.run(op)
        except RuntimeError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(claim, n)
        tg.start_soon(broken)
    assert len(failures) == 1
    assert store.db.batches - before < 201  # batched: fewer commits than operations
    assert len(await store.pending_inbox()) == 200
    rows = await store.db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM meta WHERE key='half'").fetchone())
    assert rows == (0,)  # the failed operation left nothing behind
    await store.close()


async def test_a_cancelled_caller_leaves_no_operation_behind(tmp_path: Path) -> None:
    store = await opened(tmp_path / "gw.sqlite3")
    release = threading.Event()
    started = threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(30)

    async def give_up() -> None:
        await anyio.to_thread.run_sync(started.wait)  # the writer is busy with ``slow``
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled while its claim waits for the next batch
            await store.claim(inbound("given-up"))
        release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.db.run, slow)
        tg.start_soon(give_up)
    assert not (await store.claim(inbound("given-up"))).duplicate  # the first one never ran
    await store.close()
