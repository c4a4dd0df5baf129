"""The gateway store's tables and rows: the schema, the records the store hands out, and the
SQL that more than one store operation needs (run inside the store's transactions)."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langbot_bridge.gateway.messages import ChatRef, Inbound, Outbound, OutFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    message_id TEXT NOT NULL,
    chat_key TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    received_at REAL NOT NULL,
    done_at REAL,
    UNIQUE (channel, account, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (state, chat_key, id);
CREATE TABLE IF NOT EXISTS inbox_files (
    inbox_id INTEGER NOT NULL REFERENCES inbox (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (inbox_id, position)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    chat_key TEXT NOT NULL,
    inbox_id INTEGER,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    platform_id TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, chat_key, id);
CREATE INDEX IF NOT EXISTS outbox_platform ON outbox (channel, platform_id);
CREATE TABLE IF NOT EXISTS outbox_files (
    outbox_id INTEGER PRIMARY KEY REFERENCES outbox (id) ON DELETE CASCADE,
    token TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    chat_key TEXT NOT NULL,
    messages TEXT NOT NULL,
    message_count INTEGER NOT NULL,
    chars INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_chat ON history (chat_key, id);
CREATE TABLE IF NOT EXISTS chats (
    chat_key TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    chat TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_state (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
"""


@dataclass(frozen=True, slots=True)
class Claim:
    inbox_id: int | None  # None: the message was already stored
    state: str  # "pending" or "done" (for a duplicate: how far the first copy got)

    @property
    def duplicate(self) -> bool:
        return self.inbox_id is None


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    inbound: Inbound


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    channel: str
    chat_key: str
    outbound: Outbound
    attempts: int
    next_at: float


@dataclass(frozen=True, slots=True)
class Verdict:
    chat_key: str
    state: str  # "delivered", "pending" (to be sent again: ``row``) or "dead"
    row: OutboxRow | None = None


@dataclass(frozen=True, slots=True)
class ReplyPart:
    """One outbox row to write: the message, and the file's bytes when it carries one."""

    outbound: Outbound
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class HistoryCaps:
    max_messages: int
    max_chars: int


@dataclass(frozen=True, slots=True)
class Retention:
    dedup_sec: float
    dead_letter_sec: float
    file_url_sec: float


def new_file_token() -> str:
    return secrets.token_urlsafe(32)


def out_file(name: str, mime_type: str, data: bytes) -> OutFile:
    return OutFile(
        name=name, mime_type=mime_type, size=len(data), sha256=hashlib.sha256(data).hexdigest(), token=new_file_token()
    )


def salt_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key='salt'").fetchone()
    if row is not None:
        return str(row[0])
    salt = secrets.token_hex(4)
    conn.execute("INSERT INTO meta (key, value) VALUES ('salt', ?)", (salt,))
    return salt


def remember_chat(conn: sqlite3.Connection, chat: ChatRef, now: float) -> None:
    conn.execute(
        "INSERT INTO chats (chat_key, channel, chat, first_seen, last_seen) VALUES (?,?,?,?,?) "
        "ON CONFLICT (chat_key) DO UPDATE SET chat=excluded.chat, last_seen=excluded.last_seen",
        (chat.key, chat.channel, chat.model_dump_json(), now, now),
    )


def insert_outbox(
    conn: sqlite3.Connection, parts: Sequence[ReplyPart], inbox_id: int | None, now: float, file_ttl: float
) -> list[OutboxRow]:
    rows: list[OutboxRow] = []
    for part in parts:
        outbound = part.outbound
        cursor = conn.execute(
            "INSERT INTO outbox (channel, chat_key, inbox_id, body, created_at) VALUES (?,?,?,?,?)",
            (outbound.chat.channel, outbound.chat.key, inbox_id, outbound.model_dump_json(), now),
        )
        rows.append(OutboxRow(int(cursor.lastrowid or 0), outbound.chat.channel, outbound.chat.key, outbound, 0, 0.0))
        if outbound.file is not None:
            if part.data is None:
                raise ValueError("a file reply needs its bytes")
            conn.execute(
                "INSERT INTO outbox_files (outbox_id, token, data, expires_at) VALUES (?,?,?,?)",
                (cursor.lastrowid, outbound.file.token, part.data, now + file_ttl),
            )
    return rows


def append_history(conn: sqlite3.Connection, chat_key: str, messages: list[dict[str, Any]], caps: HistoryCaps) -> None:
    text = json.dumps(messages, ensure_ascii=False)
    conn.execute(
        "INSERT INTO history (chat_key, messages, message_count, chars) VALUES (?,?,?,?)",
        (chat_key, text, len(messages), len(text)),
    )
    # Whole turns are kept or dropped, never cut: a tool result must keep its tool call.
    kept_messages = kept_chars = 0
    drop_from: int | None = None
    rows = conn.execute("SELECT id, message_count, chars FROM history WHERE chat_key=? ORDER BY id DESC", (chat_key,))
    for row_id, count, chars in rows.fetchall():
        kept_messages += count
        kept_chars += chars
        if kept_messages > caps.max_messages or kept_chars > caps.max_chars:
            drop_from = int(row_id)
            break
    if drop_from is not None:
        conn.execute("DELETE FROM history WHERE chat_key=? AND id <= ?", (chat_key, drop_from))
