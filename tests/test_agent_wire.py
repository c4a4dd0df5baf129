"""The agent's wire schema is declared once (boxagent_wire) and both sides take every name from
it; frames are encoded and decoded by its one codec. The agent's behaviour over the wire is
tested against a real agent process in test_agent*.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxruntime.backends.agent.backend import AGENT_SOURCES
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.contract import WatchKind

HOST_SIDE = sorted(AGENT_SOURCES.parent.glob("*.py"))  # the daemon's end: client, frames, fd_passing, ...
AGENT_SIDE = sorted(p for p in AGENT_SOURCES.glob("*.py") if p.name != "boxagent_wire.py")
FRAME_FORMAT = wire.PREFIX.format


def wire_names() -> set[str]:
    """Every name the wire module declares: requests, events, header fields and their values."""
    names = {value for key, value in vars(wire).items() if key.isupper() and isinstance(value, str)}
    for holder in vars(wire).values():
        if isinstance(holder, type) and holder.__module__ == wire.__name__:
            names |= {v for k, v in vars(holder).items() if k.isupper() and isinstance(v, str)}
    return names


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def literal_type_args(tree: ast.AST) -> set[int]:
    """ids of the strings inside ``Literal[...]``: a type cannot name the wire's constants."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
            found |= {id(n) for n in ast.walk(node.slice) if isinstance(n, ast.Constant)}
    return found


def spelled_names(path: Path) -> list[str]:
    """Wire names and frame constants spelled out in ``path`` instead of taken from the wire."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree) | literal_type_args(tree)
    names = wire_names() | {FRAME_FORMAT}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in skip and node.value in names:
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in ("MAX_HEADER", "MAX_BODY"):
            found.append(f"{path.name}:{node.lineno}: defines {node.id}")
    return found


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", HOST_SIDE + AGENT_SIDE, ids=lambda p: p.name)
def test_no_wire_name_is_spelled_outside_the_wire_module(path: Path) -> None:
    assert spelled_names(path) == []


def test_the_check_finds_a_spelled_name(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""spawn"""\nheader = {"op": "spawn", "note": "spawned"}\nMAX_BODY = 1\n')
    expected = ["sample.py:2: 'op'", "sample.py:2: 'spawn'", "sample.py:3: defines MAX_BODY"]
    assert sorted(spelled_names(sample)) == expected


@pytest.mark.parametrize("path", HOST_SIDE, ids=lambda p: p.name)
def test_the_host_side_frames_only_through_the_wire_codec(path: Path) -> None:
    assert not imported_modules(path) & {"json", "struct"}


def test_the_agent_side_frames_only_through_the_wire_codec() -> None:
    for path in AGENT_SIDE:
        assert "json" not in imported_modules(path), path.name


def test_the_typed_watch_kinds_are_the_wire_changes() -> None:
    assert set(typing.get_args(WatchKind)) == set(wire.CHANGES)


def test_every_request_has_one_handler_in_the_agent() -> None:
    """The agent's dispatch table, as its parts register their operations."""
    script = "import boxagent, json; print(json.dumps(sorted(boxagent.Agent('/nonexistent/agent.sock').ops)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=AGENT_SOURCES, capture_output=True, check=True)
    requests = {v for k, v in vars(wire.Op).items() if k.isupper()}
    assert set(json.loads(out.stdout)) == requests


@pytest.mark.parametrize("path", [*AGENT_SIDE, AGENT_SOURCES / "boxagent_wire.py"], ids=lambda p: p.name)
def test_the_agent_parses_as_python_3_8(path: Path) -> None:
    ast.parse(path.read_text(), feature_version=(3, 8))


values = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
headers = st.dictionaries(st.text(max_size=8), values, max_size=5)
frames = st.lists(st.tuples(headers, st.binary(max_size=300)), max_size=6)


@given(frames, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8))
def test_frames_decode_as_encoded_however_the_bytes_arrive(
    sent: list[tuple[dict[str, object], bytes]], cuts: list[int]
) -> None:
    stream = b"".join(wire.encode(h, b) for h, b in sent)
    buffer = bytearray()
    for header, body in sent:
        wire.encode_into(buffer, header, body)
    assert bytes(buffer) == stream
    decoder = wire.Decoder()
    got = []
    offset, turn = 0, 0
    while offset < len(stream):
        size = cuts[turn % len(cuts)]
        decoder.feed(stream[offset : offset + size])
        offset, turn = offset + size, turn + 1
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == sent and decoder.next_frame() is None


def test_a_blocking_reader_asks_for_exactly_the_rest_of_a_frame() -> None:
    frame = wire.encode({wire.EV: wire.Ev.HELLO}, b"body")
    decoder = wire.Decoder()
    assert decoder.missing() == wire.PREFIX.size
    decoder.feed(frame[:3])
    assert decoder.missing() == wire.PREFIX.size - 3
    decoder.feed(frame[3 : wire.PREFIX.size])
    assert decoder.missing() == len(frame) - wire.PREFIX.size
    decoder.feed(frame[wire.PREFIX.size :])
    assert decoder.missing() == 0
    assert decoder.next_frame() == ({wire.EV: wire.Ev.HELLO}, b"body")


def test_a_frame_over_the_limits_stops_the_stream() -> None:
    decoder = wire.Decoder()
    decoder.feed(wire.PREFIX.pack(wire.MAX_HEADER + 1, 0))
    with pytest.raises(wire.FrameTooLarge):
        decoder.next_frame()
    decoder = wire.Decoder()
    decoder.feed(wire.PREFIX.pack(2, wire.MAX_BODY + 1))
    with pytest.raises(wire.FrameTooLarge):
        decoder.next_frame()


@pytest.mark.parametrize("raw", [b"nope!", b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_bad_header_is_consumed_and_the_next_frame_still_reads(raw: bytes) -> None:
    decoder = wire.Decoder()
    decoder.feed(wire.PREFIX.pack(len(raw), 1) + raw + b"x")
    decoder.feed(wire.encode({wire.OP: wire.Op.PING, wire.ID: "r1"}))
    with pytest.raises(wire.BadHeader):
        decoder.next_frame()
    assert decoder.next_frame() == ({wire.OP: wire.Op.PING, wire.ID: "r1"}, b"")
