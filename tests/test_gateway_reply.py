"""Replies as outbox messages: text split at line breaks and never cut, files after the text,
the last part final, files a channel cannot take named instead of dropped; the outbox backoff."""

from __future__ import annotations

from langbot_bridge.gateway.channel import Capabilities
from langbot_bridge.gateway.chatfiles import Collected
from langbot_bridge.gateway.messages import ChatRef, safe_file_name
from langbot_bridge.gateway.outbox import Backoff
from langbot_bridge.gateway.reply import compose, split_text

CHAT = ChatRef(channel="c", chat_type="person", chat_id="u")


def test_split_text_keeps_every_character() -> None:
    text = "\n".join(f"line {n} " + "x" * (n % 37) for n in range(500))
    pieces = split_text(text, 400)
    assert all(len(p) <= 400 for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert split_text("short", 400) == ["short"]
    assert split_text("", 400) == [""]
    assert all(len(p) <= 100 for p in split_text("y" * 1000, 100))  # no break anywhere: hard cuts


def test_compose_orders_text_then_files_and_marks_the_last_final() -> None:
    files = [Collected("a.txt", "text/plain", b"A", 1), Collected("big.iso", "application/x-iso", None, 99)]
    parts = compose(CHAT, "m1", "done", files, Capabilities(max_file_bytes=10), lambda n: f"k{n}", first_sequence=3)
    assert [(p.outbound.text, p.outbound.file.name if p.outbound.file else None) for p in parts] == [
        ("done\n[big.iso was not sent: 99 bytes, more than this channel's 10]", None),
        ("", "a.txt"),
    ]
    assert [p.outbound.sequence for p in parts] == [3, 4]
    assert [p.outbound.final for p in parts] == [False, True]
    assert [p.outbound.idempotency_key for p in parts] == ["k0", "k1"]
    assert parts[1].data == b"A" and parts[1].outbound.file.size == 1  # type: ignore[union-attr]
    no_files = compose(CHAT, "m1", "", files[:1], Capabilities(files=False), lambda n: f"k{n}")
    assert [p.outbound.text for p in no_files] == ["[a.txt was not sent: this channel cannot send files]"]
    assert compose(CHAT, "m1", "", [], Capabilities(), str)[0].outbound.text == ""  # an empty answer still answers


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, jitter=0.5)
    assert [backoff.delay(n, rng=lambda: 0.0) for n in (1, 2, 3, 6, 20)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert backoff.delay(2, rng=lambda: 1.0) == 3.0


def test_file_names_are_one_safe_component() -> None:
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\x\\report final.pdf") == "report_final.pdf"
    assert safe_file_name("...") == "file.bin"
    long = safe_file_name("a" * 300 + ".tar.gz")
    assert len(long) <= 100 and long.endswith(".gz")
