"""Stdio framing (reference §A.3): newline-delimited JSON, chunked beyond 16 KiB.

Property tests drive ``encode_lines`` and ``StdioDecoder`` with arbitrary JSON objects (nested
values, unicode, multi-MB strings) fed whole, byte by byte and at random cut points, and with
junk mixed in. A few interop tests run LangBot's own ``StdioConnection`` against our framing.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langbot_plugin.runtime.io.connections.stdio import StdioConnection

from boxruntime.protocol import stdio_framing
from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES
from boxruntime.protocol.stdio_framing import CHUNK_BYTES, StdioDecoder, encode_lines

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BYTEWISE = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
# Large strings built from a short unit so hypothesis stays fast; up to ~1M characters, which is
# several MB once UTF-8 encoded or \u-escaped.
big_text = st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=16), st.integers(1, 60_000))
# Text that needs chunking for sure: at least 16 KiB of characters.
huge_text = st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=16), st.integers(CHUNK_BYTES, 60_000))


def _message(extra: dict, blob: str) -> dict:
    return {**extra, "blob": blob}


messages = st.builds(
    _message,
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.one_of(st.text(max_size=200), big_text),
)
chunked_messages = st.builds(_message, st.dictionaries(st.text(max_size=8), json_values, max_size=3), huge_text)
small_messages = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
tiny_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
tiny_messages = st.dictionaries(st.text(max_size=6), tiny_values, max_size=4)


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# A junk line: anything on one line that is not a JSON object.
junk_lines = (
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(lambda s: s.encode("utf-8")),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"{", b"}", b"{not json}", b"{]", b"null", b"[1, 2]", b'"{}"', b"\xff\xfe{}", b"{\x00}"]),
    )
    .map(lambda b: b.replace(b"\n", b" "))
    .filter(lambda b: not _is_json_object(b.strip()))
)


def _check_wire_shape(lines: list[bytes], raw: bytes) -> None:
    """Exactly LangBot's line shapes (§A.3), with 0.7's code-point-safe pieces."""
    for line in lines:
        assert line.endswith(b"\n")
        assert b"\n" not in line[:-1]
    if len(raw) <= CHUNK_BYTES:
        assert lines == [raw + b"\n"]
        return
    objs = [json.loads(line) for line in lines]
    # Marker lines are json.dumps defaults: ASCII, ", " / ": " separators, LangBot's key order.
    for line, obj in zip(lines, objs, strict=True):
        assert line == json.dumps(obj).encode() + b"\n"
    assert objs[0] == {"type": "chunk_start", "total_size": len(raw)}
    assert list(objs[0]) == ["type", "total_size"]
    assert objs[-1] == {"type": "chunk_end"}
    offset = 0
    pieces = []
    data_objs = objs[1:-1]
    assert data_objs
    for index, obj in enumerate(data_objs):
        assert list(obj) == ["type", "data", "offset"]
        assert obj["type"] == "chunk_data"
        assert obj["offset"] == offset  # a byte offset into the UTF-8 message, not a char count
        piece = obj["data"].encode("utf-8")  # a str: no piece can hold half a code point
        assert 0 < len(piece) <= CHUNK_BYTES
        if index < len(data_objs) - 1:
            # Only stepping back to a code-point boundary may shorten a piece (at most 3 bytes).
            assert len(piece) > CHUNK_BYTES - 4
        pieces.append(piece)
        offset += len(piece)
    assert b"".join(pieces) == raw
    assert offset == len(raw)


def _split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, start = [], 0
    for point in points:
        parts.append(data[start:point])
        start = point
    parts.append(data[start:])
    return parts


def _feed_all(decoder: StdioDecoder, parts: list[bytes]) -> list[dict]:
    out: list[dict] = []
    for part in parts:
        out.extend(decoder.feed(part))
    return out


# ── round trips ───────────────────────────────────────────────────────────


@BIG
@given(obj=messages, ensure_ascii=st.booleans())
def test_any_object_round_trips_whole(obj: dict, ensure_ascii: bool) -> None:
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    raw = text.encode("utf-8")
    lines = encode_lines(text)
    _check_wire_shape(lines, raw)
    assert StdioDecoder().feed(b"".join(lines)) == [obj]


@BIG
@given(obj=chunked_messages, ensure_ascii=st.booleans(), cuts=st.lists(st.integers(0, 10**8), max_size=40))
def test_chunked_object_round_trips_at_random_cut_points(obj: dict, ensure_ascii: bool, cuts: list[int]) -> None:
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    wire = b"".join(encode_lines(text))
    assert len(text.encode()) > CHUNK_BYTES
    decoder = StdioDecoder()
    assert _feed_all(decoder, _split_at(wire, cuts)) == [obj]
    assert decoder.dropped == 0


@settings(max_examples=15, deadline=None)
@given(
    # No lone surrogates (category Cs): they have no UTF-8 encoding, so no JSON text carries them raw.
    unit=st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1, max_size=5),
    pad=st.integers(0, 3),
)
def test_multibyte_message_fed_byte_by_byte(unit: str, pad: int) -> None:
    # Just over one chunk, with a pad that shifts multi-byte characters across the 16 KiB edge.
    obj = {"p": "x" * pad, "t": unit * (CHUNK_BYTES // len(unit.encode()) + 7)}
    text = json.dumps(obj, ensure_ascii=False)
    lines = encode_lines(text)
    _check_wire_shape(lines, text.encode())
    wire = b"".join(lines)
    decoder = StdioDecoder()
    out: list[dict] = []
    for i in range(len(wire)):
        out.extend(decoder.feed(wire[i : i + 1]))
    assert out == [obj]


@BYTEWISE
@given(objs=st.lists(tiny_messages, min_size=1, max_size=4))
def test_small_messages_fed_byte_by_byte(objs: list[dict]) -> None:
    wire = b"".join(line for obj in objs for line in encode_lines(json.dumps(obj)))
    decoder = StdioDecoder()
    out: list[dict] = []
    for i in range(len(wire)):
        out.extend(decoder.feed(wire[i : i + 1]))
    assert out == objs


@BIG
@given(objs=st.lists(messages, min_size=1, max_size=3), cuts=st.lists(st.integers(0, 10**8), max_size=30))
def test_message_sequence_round_trips_at_random_cut_points(objs: list[dict], cuts: list[int]) -> None:
    wire = b"".join(line for obj in objs for line in encode_lines(json.dumps(obj)))
    assert _feed_all(StdioDecoder(), _split_at(wire, cuts)) == objs


@FAST
@given(value=st.text(st.characters(exclude_categories=()), max_size=50), n=st.integers(1, 3000))
def test_ascii_escaped_surrogates_round_trip(value: str, n: int) -> None:
    # json.dumps defaults escape lone surrogates as \\udXXX; those must survive chunking too.
    obj = {"s": value * n}
    text = json.dumps(obj)
    assert text.isascii()
    lines = encode_lines(text)
    _check_wire_shape(lines, text.encode())
    assert StdioDecoder().feed(b"".join(lines)) == [obj]


def test_exactly_16384_bytes_is_one_line_and_one_more_is_chunked() -> None:
    base = json.dumps({"x": ""})
    at_limit = {"x": "a" * (CHUNK_BYTES - len(base))}
    text = json.dumps(at_limit)
    assert len(text) == CHUNK_BYTES
    assert encode_lines(text) == [text.encode() + b"\n"]
    over = {"x": "a" * (CHUNK_BYTES - len(base) + 1)}
    lines = encode_lines(json.dumps(over))
    assert json.loads(lines[0]) == {"type": "chunk_start", "total_size": CHUNK_BYTES + 1}
    assert [json.loads(line)["type"] for line in lines] == ["chunk_start", "chunk_data", "chunk_data", "chunk_end"]
    assert StdioDecoder().feed(b"".join(lines)) == [over]


def test_pieces_step_back_over_a_code_point_at_the_chunk_edge() -> None:
    # A 3-byte character straddling byte 16384 must go whole into the second piece.
    text = json.dumps({"t": "a" * (CHUNK_BYTES - 9) + "€" * 10}, ensure_ascii=False)
    raw = text.encode()
    assert raw[CHUNK_BYTES] & 0xC0 == 0x80  # byte 16384 is inside a character
    lines = encode_lines(text)
    _check_wire_shape(lines, raw)
    first = json.loads(lines[1])
    assert len(first["data"].encode()) < CHUNK_BYTES
    assert json.loads(lines[2])["offset"] == len(first["data"].encode())


def test_message_over_16_mib_raises_on_encode() -> None:
    text = json.dumps({"x": "a" * MAX_MESSAGE_BYTES})
    with pytest.raises(ValueError):
        encode_lines(text)
    # The limit counts UTF-8 bytes, not characters.
    wide = json.dumps({"x": "é" * (MAX_MESSAGE_BYTES // 2)}, ensure_ascii=False)
    assert len(wide) < MAX_MESSAGE_BYTES < len(wide.encode())
    with pytest.raises(ValueError):
        encode_lines(wide)


def test_message_of_exactly_16_mib_is_encoded_and_decoded() -> None:
    base = json.dumps({"x": ""})
    obj = {"x": "a" * (MAX_MESSAGE_BYTES - len(base))}
    lines = encode_lines(json.dumps(obj))
    assert json.loads(lines[0])["total_size"] == MAX_MESSAGE_BYTES
    assert StdioDecoder().feed(b"".join(lines)) == [obj]


# ── junk never crashes the reader ─────────────────────────────────────────


@BIG
@given(
    items=st.lists(
        st.one_of(small_messages.map(lambda m: ("msg", m)), junk_lines.map(lambda j: ("junk", j))), max_size=12
    ),
    cuts=st.lists(st.integers(0, 10**6), max_size=20),
)
def test_junk_lines_between_messages_are_dropped(items: list, cuts: list[int]) -> None:
    wire = b"".join(encode_lines(json.dumps(v))[0] if kind == "msg" else v + b"\n" for kind, v in items)
    expected = [v for kind, v in items if kind == "msg"]
    assert _feed_all(StdioDecoder(), _split_at(wire, cuts)) == expected


@FAST
@given(data=st.binary(max_size=4000), cuts=st.lists(st.integers(0, 10**6), max_size=10))
def test_random_bytes_never_raise_and_the_next_line_still_decodes(data: bytes, cuts: list[int]) -> None:
    decoder = StdioDecoder()
    for part in _split_at(data, cuts):
        decoder.feed(part)  # must not raise
    # Whatever state the junk left (half a line, a chunk sequence), a newline, chunk_end and
    # another line put the reader back in sync.
    decoder.feed(b'\n{"type": "chunk_end"}\n')
    assert decoder.feed(b'{"seq_id": 1, "action": "__ping", "data": {}}\n') == [
        {"seq_id": 1, "action": "__ping", "data": {}}
    ]


@BYTEWISE
@given(obj=chunked_messages, junk=st.lists(junk_lines, min_size=1, max_size=5), where=st.integers(0, 10**6))
def test_junk_lines_inside_a_chunk_sequence_do_not_break_it(obj: dict, junk: list[bytes], where: int) -> None:
    lines = encode_lines(json.dumps(obj))
    at = 1 + where % (len(lines) - 1)  # anywhere after chunk_start, before chunk_end
    wire = b"".join(lines[:at]) + b"".join(j + b"\n" for j in junk) + b"".join(lines[at:])
    assert StdioDecoder().feed(wire) == [obj]


def test_plain_message_inside_a_chunk_sequence_is_dropped_like_langbot() -> None:
    big = {"x": "a" * 40_000}
    lines = encode_lines(json.dumps(big))
    intruder = b'{"seq_id": 5, "action": "__ping", "data": {}}\n'
    after = b'{"seq_id": 6, "action": "__ping", "data": {}}\n'
    wire = lines[0] + lines[1] + intruder + b"".join(lines[2:]) + after
    assert StdioDecoder().feed(wire) == [big, {"seq_id": 6, "action": "__ping", "data": {}}]


def test_non_json_and_non_object_lines_are_dropped() -> None:
    decoder = StdioDecoder()
    wire = b'hello from a stray print\n[1, 2, 3]\n42\n"text"\n{broken json}\n\n   \n' + b'  {"a": 1}  \r\n'
    assert decoder.feed(wire) == [{"a": 1}]
    assert decoder.dropped == 5


def test_chunk_markers_outside_a_sequence_are_dropped() -> None:
    decoder = StdioDecoder()
    wire = b'{"type": "chunk_data", "data": "{}", "offset": 0}\n{"type": "chunk_end"}\n{"b": 2}\n'
    assert decoder.feed(wire) == [{"b": 2}]
    assert decoder.dropped == 2


def test_other_type_values_are_ordinary_messages() -> None:
    wire = b'{"type": "event", "x": 1}\n{"type": null}\n'
    assert StdioDecoder().feed(wire) == [{"type": "event", "x": 1}, {"type": None}]


def _chunk_lines(parts: list[tuple[str, int]], total: int) -> bytes:
    lines = [json.dumps({"type": "chunk_start", "total_size": total})]
    lines += [json.dumps({"type": "chunk_data", "data": d, "offset": o}) for d, o in parts]
    lines.append(json.dumps({"type": "chunk_end"}))
    return "\n".join(lines).encode() + b"\n"


GOOD = b'{"ok": true}\n'


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 5)], 8), id="offset-gap"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 7)], 8), id="offset-overlap"),
        pytest.param(_chunk_lines([('{"a": ', 1), ("1}", 7)], 8), id="first-offset-not-zero"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", "6")], 8), id="offset-not-int"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 6)], 9), id="total-size-larger"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 6)], 7), id="total-size-smaller"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 6)], -1), id="total-size-negative"),
        pytest.param(_chunk_lines([('{"a": ', 0), ("1}", 6)], MAX_MESSAGE_BYTES + 1), id="total-size-over-16mib"),
        pytest.param(
            b'{"type": "chunk_start", "total_size": "8"}\n{"type": "chunk_data", "data": "{\\"a\\": 1}", "offset": 0}\n'
            b'{"type": "chunk_end"}\n',
            id="total-size-not-int",
        ),
        pytest.param(
            b'{"type": "chunk_start", "total_size": true}\n{"type": "chunk_data", "data": "{", "offset": 0}\n'
            b'{"type": "chunk_end"}\n',
            id="total-size-bool",
        ),
        pytest.param(
            b'{"type": "chunk_start", "total_size": 8}\n{"type": "chunk_data", "data": 12345678, "offset": 0}\n'
            b'{"type": "chunk_end"}\n',
            id="data-not-str",
        ),
        pytest.param(_chunk_lines([("[1, 2]", 0)], 6), id="assembled-not-object"),
        pytest.param(_chunk_lines([("{nope}", 0)], 6), id="assembled-not-json"),
    ],
)
def test_bad_chunk_sequences_are_dropped_and_the_reader_recovers(wire: bytes) -> None:
    decoder = StdioDecoder()
    assert decoder.feed(wire) == []
    assert decoder.dropped >= 1
    assert decoder.feed(GOOD) == [{"ok": True}]


def test_consistent_chunk_sequence_over_16_mib_is_refused() -> None:
    # Sizes and offsets all agree, but the announced total is over the protocol limit.
    base = json.dumps({"x": ""})
    text = json.dumps({"x": "a" * (MAX_MESSAGE_BYTES + 1 - len(base))})
    assert len(text) == MAX_MESSAGE_BYTES + 1
    pieces = [(text[i : i + CHUNK_BYTES], i) for i in range(0, len(text), CHUNK_BYTES)]
    decoder = StdioDecoder()
    assert decoder.feed(_chunk_lines(pieces, len(text))) == []
    assert decoder.feed(GOOD) == [{"ok": True}]


def test_good_hand_built_chunk_sequence_is_accepted() -> None:
    # The control case for the table above: same lines, consistent sizes and offsets.
    assert StdioDecoder().feed(_chunk_lines([('{"a": ', 0), ("1}", 6)], 8)) == [{"a": 1}]


def test_restarted_chunk_sequence_drops_the_unfinished_one() -> None:
    first = _chunk_lines([('{"a": ', 0)], 8).split(b"\n")[:2]  # chunk_start + one chunk_data
    wire = b"\n".join(first) + b"\n" + _chunk_lines([('{"b": 2}', 0)], 8)
    assert StdioDecoder().feed(wire) == [{"b": 2}]


@pytest.mark.parametrize(
    ("total", "accepted"), [(stdio_framing.MAX_CHUNKS, True), (stdio_framing.MAX_CHUNKS + 1, False)]
)
def test_at_most_4096_chunk_lines(total: int, accepted: bool) -> None:
    parts = [("{" if i == 0 else ("}" if i == total - 1 else " "), i) for i in range(total)]
    decoder = StdioDecoder()
    assert decoder.feed(_chunk_lines(parts, total)) == ([{}] if accepted else [])
    assert decoder.feed(GOOD) == [{"ok": True}]


def test_over_long_line_is_discarded_without_unbounded_buffering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio_framing, "MAX_LINE_BYTES", 1000)
    decoder = StdioDecoder()
    assert decoder.feed(b'{"first": 1}\n{"junk": "') == [{"first": 1}]
    for _ in range(500):
        assert decoder.feed(b"z" * 1500) == []
        assert len(decoder._buffer) <= 1000
    # The rest of the over-long line, up to its newline, is skipped even when that tail looks
    # like a message of its own; the next line decodes.
    assert decoder.feed(b'{"seq_id": 1, "action": "smuggled", "data": {}}') == []
    assert decoder.feed(b'\n{"next": 2}\n') == [{"next": 2}]
    assert decoder.feed(b'{"later": 3}\n') == [{"later": 3}]


def test_over_long_line_at_the_real_limit_is_discarded() -> None:
    decoder = StdioDecoder()
    piece = b"a" * (1024 * 1024)
    fed = 0
    decoder.feed(b'{"x": "')
    while fed <= stdio_framing.MAX_LINE_BYTES + len(piece):
        assert decoder.feed(piece) == []
        fed += len(piece)
        assert len(decoder._buffer) <= stdio_framing.MAX_LINE_BYTES
    assert decoder.dropped == 1
    assert decoder.feed(b'"}\n{"next": 2}\n') == [{"next": 2}]


# ── interop with LangBot's own StdioConnection (langbot-plugin 0.5.0a2) ───


class _CollectingWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.mark.parametrize("size", [10, CHUNK_BYTES, 100_000])
def test_langbot_sender_is_read_by_our_decoder(size: int) -> None:
    obj = {"seq_id": 3, "action": "box_exec", "data": {"cmd": "echo " + 'é"\\' * size}}
    writer = _CollectingWriter()

    async def send() -> None:
        await StdioConnection(asyncio.StreamReader(), writer).send(json.dumps(obj))

    asyncio.run(send())
    assert StdioDecoder().feed(bytes(writer.data)) == [obj]


@pytest.mark.parametrize("size", [10, CHUNK_BYTES, 100_000])
def test_our_encoder_is_read_by_langbot_receiver(size: int) -> None:
    obj = {"seq_id": 3, "code": 0, "message": "success", "data": {"stdout": 'é"\\' * size}, "chunk_status": "continue"}

    async def receive() -> str:
        reader = asyncio.StreamReader(limit=64 * 1024)  # the Box side's explicit limit
        reader.feed_data(b"".join(encode_lines(json.dumps(obj))))
        reader.feed_eof()
        return await StdioConnection(reader, _CollectingWriter()).receive()

    assert json.loads(asyncio.run(receive())) == obj
