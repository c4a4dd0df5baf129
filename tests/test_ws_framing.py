"""WebSocket message rules (reference §A.4): ``MessageJoiner``.

One text message is one protocol message; LangBot 0.5's client instead sends anything over
64 KiB as separate 65 536-byte text messages, which the joiner must put back together.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES
from boxruntime.protocol.ws_framing import MessageJoiner

LANGBOT_SLICE = 64 * 1024

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
big_text = st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=16), st.integers(1, 40_000))
large_objects = st.builds(
    lambda extra, blob: {**extra, "blob": blob},
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    big_text,
)


def langbot_05_messages(obj: dict, slice_bytes: int = LANGBOT_SLICE) -> list[str]:
    """What LangBot 0.5's WebSocketConnection.send puts on the wire for ``obj``."""
    message = json.dumps(obj)
    raw = message.encode("utf-8")
    if len(raw) <= slice_bytes:
        return [message]
    return [raw[i : i + slice_bytes].decode("utf-8") for i in range(0, len(raw), slice_bytes)]


def feed_all(joiner: MessageJoiner, texts: list[str]) -> list[list[dict]]:
    return [joiner.feed(text) for text in texts]


def test_whole_object_message_passes() -> None:
    joiner = MessageJoiner()
    msg = {"seq_id": 1, "action": "__ping", "data": {}}
    assert joiner.feed(json.dumps(msg)) == [msg]
    assert joiner.feed(json.dumps(msg, ensure_ascii=False, separators=(",", ":"))) == [msg]
    assert joiner.dropped == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=large_objects, follow=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_langbot_05_split_messages_are_rejoined(obj: dict, follow: dict) -> None:
    joiner = MessageJoiner()
    texts = langbot_05_messages(obj)
    outputs = feed_all(joiner, texts)
    # Nothing comes out until the last slice; then exactly the original object.
    assert outputs[:-1] == [[] for _ in texts[:-1]]
    assert outputs[-1] == [obj]
    # The joiner is back to its initial state: the next standalone message passes untouched.
    assert joiner.feed(json.dumps(follow)) == [follow]
    assert joiner.dropped == 0


def test_split_message_followed_by_a_standalone_message() -> None:
    joiner = MessageJoiner()
    big = {"seq_id": 9, "action": "box_exec", "data": {"cmd": "cat <<EOF\n" + "}" * 200_000 + "\nEOF"}}
    texts = langbot_05_messages(big)
    assert len(texts) > 3
    ping = {"seq_id": 10, "action": "__ping", "data": {}}
    assert feed_all(joiner, [*texts, json.dumps(ping)]) == [*[[] for _ in texts[:-1]], [big], [ping]]


def test_two_split_messages_back_to_back() -> None:
    joiner = MessageJoiner()
    first = {"n": 1, "blob": "a" * 150_000}
    second = {"n": 2, "blob": "b" * 70_000}
    out = feed_all(joiner, langbot_05_messages(first) + langbot_05_messages(second))
    assert [obj for batch in out for obj in batch] == [first, second]


def test_split_message_of_nearly_16_mib_is_rejoined() -> None:
    base = json.dumps({"x": ""})
    obj = {"x": "a" * (MAX_MESSAGE_BYTES - len(base))}
    texts = langbot_05_messages(obj)
    assert len(texts) == MAX_MESSAGE_BYTES // LANGBOT_SLICE
    assert feed_all(MessageJoiner(), texts)[-1] == [obj]


def test_junk_message_followed_by_a_valid_one_does_not_lose_it() -> None:
    joiner = MessageJoiner()
    valid = {"seq_id": 2, "action": "__ping", "data": {}}
    assert joiner.feed('{"this is not": json') == []  # looks like the start of a split message
    assert joiner.feed(json.dumps(valid)) == [valid]
    assert joiner.dropped == 1
    # And the joiner is clean again afterwards.
    assert joiner.feed(json.dumps({"a": 1})) == [{"a": 1}]


def test_non_object_messages_are_dropped_without_buffering() -> None:
    joiner = MessageJoiner()
    for junk in ["hello", "[1, 2, 3]", "42", '"{}"', "", "null"]:
        assert joiner.feed(junk) == []
    assert joiner.dropped == 6
    assert joiner.feed('{"ok": true}') == [{"ok": True}]


@given(junk=st.text(max_size=300), valid=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
@settings(max_examples=150, deadline=None)
def test_any_junk_message_then_a_valid_one(junk: str, valid: dict) -> None:
    joiner = MessageJoiner()
    first = joiner.feed(junk)  # must not raise
    try:
        parsed = json.loads(junk)
    except ValueError:
        parsed = None
    assert first == ([parsed] if isinstance(parsed, dict) else [])
    assert joiner.feed(json.dumps(valid)) == [valid]


def test_oversize_split_message_is_dropped_and_the_joiner_recovers() -> None:
    joiner = MessageJoiner(max_bytes=1000)
    oversize = {"data": "a" * 5000}
    outputs = feed_all(joiner, langbot_05_messages(oversize, slice_bytes=256))
    assert all(out == [] for out in outputs)
    assert joiner.dropped >= 1
    # Nothing of it was kept: a standalone message and a split one within the limit both pass.
    small = {"seq_id": 3, "action": "__ping", "data": {}}
    assert joiner.feed(json.dumps(small)) == [small]
    fits = {"data": "b" * 800}
    texts = langbot_05_messages(fits, slice_bytes=256)
    assert len(texts) > 1
    assert feed_all(joiner, texts)[-1] == [fits]


def test_oversize_buffer_is_bounded() -> None:
    joiner = MessageJoiner(max_bytes=1000)
    assert joiner.feed('{"endless": "') == []
    for _ in range(100):
        assert joiner.feed("x" * 300) == []
        assert sum(len(part) for part in joiner._parts) <= 1000 + 300
    assert joiner.dropped >= 1
    assert joiner.feed('{"after": 1}') == [{"after": 1}]


def test_middle_slice_that_is_itself_an_object_does_not_break_the_message() -> None:
    # A nested object that happens to fill exactly one 64 KiB slice of a LangBot 0.5 split
    # message must not be taken for a standalone message.
    prefix = '{"pad": "'
    head = '", "inner": '
    pad = "p" * (LANGBOT_SLICE - len(prefix) - len(head))
    inner_base = json.dumps({"k": ""})
    inner = {"k": "i" * (LANGBOT_SLICE - len(inner_base))}
    obj = {"pad": pad, "inner": inner, "tail": "t" * 100}
    texts = langbot_05_messages(obj)
    assert texts[1] == json.dumps(inner)  # the second slice alone is a JSON object
    out = feed_all(MessageJoiner(), texts)
    assert [o for batch in out for o in batch] == [obj]
