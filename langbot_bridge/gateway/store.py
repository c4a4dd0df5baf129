"""The gateway's durable state, in one SQLite file: inbox (dedup and pending work), outbox
(replies, ordered per chat, with their attempts), files in both directions, conversation
history and the chats the gateway knows.

- ``claim`` stores a platform message once per (channel, account, platform message id),
  atomically with its files, and is committed before the channel acks the platform: a
  redelivered message is recognised even after a restart, and an acked one is never lost.
- ``complete_turn`` writes a turn's reply into the outbox, marks the message done and appends
  the history in one transaction: a turn is either still to do or done with its reply queued.
- Outbox rows move ``pending`` -> ``delivered`` (or ``sent`` while a platform's result callback
  is awaited) or ``dead`` after the last attempt.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langbot_bridge.gateway.database import Database
from langbot_bridge.gateway.messages import ChatRef, Inbound, Outbound, OutFile
from langbot_bridge.gateway.records import (
    SCHEMA,
    Claim,
    HistoryCaps,
    InboxRow,
    OutboxRow,
    ReplyPart,
    Retention,
    Verdict,
    append_history,
    insert_outbox,
    out_file,
    remember_chat,
    salt_of,
)

__all__ = [
    "Claim",
    "HistoryCaps",
    "InboxRow",
    "OutboxRow",
    "ReplyPart",
    "Retention",
    "Store",
    "TurnAlreadyCompleted",
    "Verdict",
    "out_file",
]


class TurnAlreadyCompleted(RuntimeError):
    """A turn's message was done already: its reply must not be stored (or sent) again."""


class Store:
    def __init__(self, path: Path, *, synchronous: str = "full", file_url_ttl_sec: float = 86400) -> None:
        self.db = Database(path, synchronous=synchronous)
        self.file_url_ttl_sec = file_url_ttl_sec
        self.salt = ""  # per database: idempotency keys never repeat across installations

    async def open(self) -> None:
        await self.db.open(SCHEMA)
        self.salt = await self.db.run(salt_of)

    async def close(self) -> None:
        await self.db.close()

    def idempotency_key(self, inbox_id: int | None, position: int) -> str:
        scope = f"i{inbox_id}" if inbox_id is not None else f"a{secrets.token_hex(6)}"
        return f"{self.salt}-{scope}-{position}"

    # ── inbox ─────────────────────────────────────────────────────────────

    async def claim(self, inbound: Inbound, files: Sequence[bytes] = ()) -> Claim:
        """Store the message unless (channel, account, message id) is known; committed on return."""
        if len(files) != len(inbound.files):
            raise ValueError("one byte string per declared file")
        chat = inbound.chat
        body = inbound.model_dump_json()

        def op(conn: sqlite3.Connection) -> Claim:
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO inbox (channel, account, message_id, chat_key, body, received_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (channel, account, message_id) DO NOTHING",
                (chat.channel, chat.account, inbound.message_id, chat.key, body, now),
            )
            if cursor.rowcount == 0:
                row = conn.execute(
                    "SELECT state FROM inbox WHERE channel=? AND account=? AND message_id=?",
                    (chat.channel, chat.account, inbound.message_id),
                ).fetchone()
                return Claim(None, str(row[0]))
            inbox_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO inbox_files (inbox_id, position, data) VALUES (?,?,?)",
                [(inbox_id, position, data) for position, data in enumerate(files)],
            )
            remember_chat(conn, chat, now)
            return Claim(inbox_id, "pending")

        return await self.db.run(op)

    async def pending_inbox(self) -> list[InboxRow]:
        """Every message still to answer, oldest first (a restart picks them up; while running,
        the gateway hands new messages to their chat's lane in memory)."""

        def op(conn: sqlite3.Connection) -> list[InboxRow]:
            rows = conn.execute("SELECT id, body FROM inbox WHERE state='pending' ORDER BY id").fetchall()
            return [InboxRow(int(i), Inbound.model_validate_json(b)) for i, b in rows]

        return await self.db.run(op)

    async def inbox_files(self, inbox_id: int) -> list[bytes]:
        def op(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute("SELECT data FROM inbox_files WHERE inbox_id=? ORDER BY position", (inbox_id,))
            return [bytes(data) for (data,) in rows]

        return await self.db.run(op)

    async def complete_turn(
        self,
        inbox_id: int,
        chat_key: str,
        parts: Sequence[ReplyPart],
        history: list[dict[str, Any]] | None,
        caps: HistoryCaps,
    ) -> list[OutboxRow]:
        """The turn's reply queued, the message done, its files dropped, history appended: at
        once. Returns the queued rows."""

        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            now = time.time()
            updated = conn.execute(
                "UPDATE inbox SET state='done', done_at=? WHERE id=? AND state='pending'", (now, inbox_id)
            )
            if updated.rowcount != 1:
                raise TurnAlreadyCompleted(f"inbox message {inbox_id} is not pending; its turn was completed already")
            conn.execute("DELETE FROM inbox_files WHERE inbox_id=?", (inbox_id,))
            if history:
                append_history(conn, chat_key, history, caps)
            return insert_outbox(conn, parts, inbox_id, now, self.file_url_ttl_sec)

        return await self.db.run(op)

    async def enqueue(self, parts: Sequence[ReplyPart]) -> list[OutboxRow]:
        """Queue a message that answers nothing (a proactive send)."""

        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            return insert_outbox(conn, parts, None, time.time(), self.file_url_ttl_sec)

        return await self.db.run(op)

    # ── outbox ────────────────────────────────────────────────────────────

    async def pending_outbox(self) -> list[OutboxRow]:
        """Every message still to send, oldest first (for a restart, as ``pending_inbox``)."""

        def op(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(
                "SELECT id, channel, chat_key, body, attempts, next_at FROM outbox WHERE state='pending' ORDER BY id"
            ).fetchall()
            return [OutboxRow(int(r[0]), r[1], r[2], Outbound.model_validate_json(r[3]), int(r[4]), r[5]) for r in rows]

        return await self.db.run(op)

    async def outbox_file(self, outbox_id: int) -> bytes:
        def op(conn: sqlite3.Connection) -> bytes:
            row = conn.execute("SELECT data FROM outbox_files WHERE outbox_id=?", (outbox_id,)).fetchone()
            if row is None:
                raise LookupError(f"outbox message {outbox_id} has no file")
            return bytes(row[0])

        return await self.db.run(op)

    async def file_by_token(self, token: str) -> tuple[OutFile, bytes] | None:
        """A reply file by its download token, while the token is valid."""

        def op(conn: sqlite3.Connection) -> tuple[OutFile, bytes] | None:
            row = conn.execute(
                "SELECT o.body, f.data FROM outbox_files f JOIN outbox o ON o.id = f.outbox_id "
                "WHERE f.token=? AND f.expires_at > ?",
                (token, time.time()),
            ).fetchone()
            if row is None:
                return None
            outbound = Outbound.model_validate_json(row[0])
            assert outbound.file is not None
            return outbound.file, bytes(row[1])

        return await self.db.run(op)

    async def mark_sent(self, outbox_id: int, attempts: int, platform_id: str, confirmed: bool) -> None:
        state = "delivered" if confirmed else "sent"
        await self.db.run(
            lambda conn: conn.execute(
                "UPDATE outbox SET state=?, attempts=?, platform_id=?, finished_at=?, last_error=NULL WHERE id=?",
                (state, attempts, platform_id or None, time.time(), outbox_id),
            )
        )

    async def mark_retry(self, outbox_id: int, attempts: int, next_at: float, error: str) -> None:
        await self.db.run(
            lambda conn: conn.execute(
                "UPDATE outbox SET attempts=?, next_at=?, last_error=? WHERE id=?",
                (attempts, next_at, error, outbox_id),
            )
        )

    async def mark_dead(self, outbox_id: int, attempts: int, error: str) -> None:
        await self.db.run(
            lambda conn: conn.execute(
                "UPDATE outbox SET state='dead', attempts=?, last_error=?, finished_at=? WHERE id=?",
                (attempts, error, time.time(), outbox_id),
            )
        )

    async def delivery_result(
        self, channel: str, platform_id: str, error: str | None, retry: bool, max_attempts: int
    ) -> Verdict | None:
        """A platform's later verdict on a sent message: delivered, back to pending (to send
        again), or dead. None when no sent message has that platform id."""

        def op(conn: sqlite3.Connection) -> Verdict | None:
            row = conn.execute(
                "SELECT id, chat_key, attempts, body FROM outbox WHERE channel=? AND platform_id=? AND state='sent'",
                (channel, platform_id),
            ).fetchone()
            if row is None:
                return None
            outbox_id, chat_key, attempts = int(row[0]), str(row[1]), int(row[2])
            if error is None:
                conn.execute("UPDATE outbox SET state='delivered' WHERE id=?", (outbox_id,))
                return Verdict(chat_key, "delivered")
            if retry and attempts < max_attempts:
                now = time.time()
                conn.execute(
                    "UPDATE outbox SET state='pending', next_at=?, last_error=?, platform_id=NULL WHERE id=?",
                    (now, error, outbox_id),
                )
                again = OutboxRow(outbox_id, channel, chat_key, Outbound.model_validate_json(row[3]), attempts, now)
                return Verdict(chat_key, "pending", again)
            conn.execute("UPDATE outbox SET state='dead', last_error=? WHERE id=?", (error, outbox_id))
            return Verdict(chat_key, "dead")

        return await self.db.run(op)

    async def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT id, channel, attempts, last_error, finished_at FROM outbox WHERE state='dead' "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            keys = ("id", "channel", "attempts", "error", "at")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self.db.run(op)

    # ── history and chats ─────────────────────────────────────────────────

    async def history(self, chat_key: str) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT messages FROM history WHERE chat_key=? ORDER BY id", (chat_key,))
            messages: list[dict[str, Any]] = []
            for (text,) in rows:
                messages += json.loads(text)
            return messages

        return await self.db.run(op)

    async def find_chat(self, wanted: ChatRef) -> ChatRef | None:
        """The stored chat of ``wanted``'s channel with its type, id and thread (any account):
        a proactive-send target names a conversation, not the account that saw it."""

        def op(conn: sqlite3.Connection) -> ChatRef | None:
            rows = conn.execute("SELECT chat FROM chats WHERE channel=? ORDER BY last_seen DESC", (wanted.channel,))
            for (text,) in rows:
                chat = ChatRef.model_validate_json(text)
                same = (chat.chat_type, chat.chat_id, chat.thread) == (wanted.chat_type, wanted.chat_id, wanted.thread)
                if same:
                    return chat
            return None

        return await self.db.run(op)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per channel: pending messages, outbox rows by state, known chats."""

        def op(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            queries = (
                ("SELECT channel, 'inbox_' || state, COUNT(*) FROM inbox GROUP BY channel, state", ()),
                ("SELECT channel, 'outbox_' || state, COUNT(*) FROM outbox GROUP BY channel, state", ()),
                ("SELECT channel, 'known_chats', COUNT(*) FROM chats GROUP BY channel", ()),
            )
            for query, args in queries:
                for channel, name, count in conn.execute(query, args):
                    counts.setdefault(str(channel), {})[str(name)] = int(count)
            return counts

        return await self.db.run(op)

    async def remember_chats(self, chats: Sequence[ChatRef]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            for chat in chats:
                remember_chat(conn, chat, now)

        await self.db.run(op)

    # ── channel and agent state ───────────────────────────────────────────

    async def load_state(self, owner: str, key: str) -> str | None:
        """A value a channel or agent kept (a sync cursor, a resumable session), or None."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM channel_state WHERE owner=? AND key=?", (owner, key)).fetchone()
            return None if row is None else str(row[0])

        return await self.db.run(op)

    async def save_state(self, owner: str, key: str, value: str | None) -> None:
        """Keep ``value`` under (owner, key), committed on return; None forgets it."""

        def op(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM channel_state WHERE owner=? AND key=?", (owner, key))
                return
            conn.execute(
                "INSERT INTO channel_state (owner, key, value, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT (owner, key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (owner, key, value, time.time()),
            )

        await self.db.run(op)

    # ── upkeep ────────────────────────────────────────────────────────────

    async def prune(self, retention: Retention) -> int:
        """Forget what no redelivery can need any more; returns how many rows went."""

        def op(conn: sqlite3.Connection) -> int:
            now = time.time()
            removed = conn.execute(
                "DELETE FROM inbox WHERE state='done' AND done_at < ?", (now - retention.dedup_sec,)
            ).rowcount
            removed += conn.execute("DELETE FROM outbox_files WHERE expires_at < ?", (now,)).rowcount
            # A sent message whose result never came is as good as delivered after a while.
            removed += conn.execute(
                "DELETE FROM outbox WHERE (state IN ('delivered', 'sent') AND finished_at < ?) "
                "OR (state='dead' AND finished_at < ?)",
                (now - max(retention.file_url_sec, retention.dedup_sec), now - retention.dead_letter_sec),
            ).rowcount
            return int(removed)

        return await self.db.run(op)
