"""The E2B front door's pure parts: Connect framing, paths and users, signed URLs, how a
command's end is reported, envd's messages. Expected values come from the protocol facts
(reference e2b-compat.md §3: connectrpc's envelopes, envd's ProcessState strings, the SDK's
signature.py), not from our own client."""

from __future__ import annotations

import base64
import hashlib
import json
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxruntime.backends.agent.commands import CommandExit
from boxruntime.backends.contract import FileInfo
from boxruntime.edges.e2b.connect import ConnectError, EnvelopeReader, end_stream, envelope
from boxruntime.edges.e2b.envd_messages import SendInputRequest, StartRequest, entry_info
from boxruntime.edges.e2b.files_http import signature
from boxruntime.edges.e2b.parsing import parse
from boxruntime.edges.e2b.process_service import end_event
from boxruntime.edges.e2b.users import check_user, resolve


def test_envelopes_are_a_flag_byte_a_big_endian_length_and_json() -> None:
    assert envelope({"a": 1}) == b"\x00\x00\x00\x00\x07" + b'{"a":1}'
    assert end_stream() == b"\x02\x00\x00\x00\x02{}"
    ended = end_stream(ConnectError("not_found", "gone"))
    assert ended[:1] == b"\x02" and json.loads(ended[5:]) == {"error": {"code": "not_found", "message": "gone"}}


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers()), max_size=5), st.integers(1, 7))
def test_a_client_stream_is_read_whatever_pieces_it_arrives_in(messages: list[dict[str, int]], step: int) -> None:
    wire = b"".join(envelope(m) for m in messages)
    reader = EnvelopeReader()
    got = []
    for start in range(0, len(wire), step):
        got += [m for _, m in reader.feed(wire[start : start + step])]
    assert got == messages and reader.leftover == 0


def test_a_compressed_or_oversized_message_is_refused() -> None:
    with pytest.raises(ConnectError, match="compressed"):
        EnvelopeReader().feed(b"\x01\x00\x00\x00\x02{}")
    with pytest.raises(ConnectError) as big:
        EnvelopeReader().feed(b"\x00\x7f\xff\xff\xff")
    assert big.value.code == "resource_exhausted"


def test_paths_resolve_from_the_home_directory_as_envd_does() -> None:
    assert resolve("notes/a.txt") == "/home/user/notes/a.txt"
    assert resolve("~") == resolve("") == "/home/user"
    assert resolve("~/x/../y") == "/home/user/y"
    assert resolve("/tmp//z/") == "/tmp/z"
    with pytest.raises(ConnectError):
        resolve("bad\0path")


def test_the_one_user_is_user_and_root_is_refused_saying_why() -> None:
    assert check_user(None) == check_user("user") == "user"
    with pytest.raises(ConnectError) as root:
        check_user("root")
    assert root.value.code == "permission_denied" and "unprivileged" in root.value.message
    with pytest.raises(ConnectError) as other:
        check_user("alice")
    assert other.value.code == "unauthenticated"


def test_signed_urls_match_the_sdks_signature() -> None:
    # e2b/sandbox/signature.py: v1_ + unpadded base64 of sha256("path:op:user:token[:exp]").
    digest = hashlib.sha256(b"/home/user/a.txt:read::tok:1700000000").digest()
    expected = "v1_" + base64.b64encode(digest).decode().rstrip("=")
    assert signature("/home/user/a.txt", "read", "", "tok", "1700000000") == expected
    assert signature("a", "write", "user", "tok", None) != signature("a", "read", "user", "tok", None)


def exit_of(code: int | None, sig: int | None, reason: str = "exit") -> CommandExit:
    return CommandExit(code, sig, reason, 1, 0, 0, 0, 0)


def test_a_commands_end_reads_as_gos_process_state() -> None:
    assert end_event(exit_of(0, None))["event"]["end"] == {"exitCode": 0, "exited": True, "status": "exit status 0"}
    failed = end_event(exit_of(3, None))["event"]["end"]
    assert failed == {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"}
    killed = end_event(exit_of(137, signal.SIGKILL, "signal"))["event"]["end"]
    assert killed == {"exitCode": -1, "exited": False, "status": "signal: killed", "error": "signal: killed"}
    assert end_event(exit_of(143, signal.SIGTERM, "signal"))["event"]["end"]["status"] == "signal: terminated"


def test_requests_take_camel_and_snake_case_and_base64_bytes() -> None:
    start = parse(
        StartRequest, {"process": {"cmd": "/bin/bash", "args": ["-c", "x"], "envs": {"A": "1"}}, "stdin": False}
    )
    assert (start.process.cmd, start.process.args, start.stdin, start.pty) == ("/bin/bash", ["-c", "x"], False, None)
    data = parse(SendInputRequest, {"process": {"pid": "12"}, "input": {"stdin": base64.b64encode(b"\x00hi").decode()}})
    assert (data.process.pid, data.input.stdin) == (12, b"\x00hi")
    urlsafe = parse(SendInputRequest, {"process": {"pid": 1}, "input": {"stdin": "-_8"}})  # unpadded, URL-safe
    assert urlsafe.input.stdin == base64.urlsafe_b64decode("-_8=")
    with pytest.raises(ConnectError) as bad:
        parse(StartRequest, {"process": {}})
    assert bad.value.code == "invalid_argument" and "cmd" in bad.value.message


def test_entries_read_as_envd_describes_them() -> None:
    agent = {"type": "file", "size": 5, "mode": 0o644, "mtime": 0.5, "owner": "1000", "group": "1000"}
    info = FileInfo.model_validate({**agent, "path": "/home/user/a", "uid": 1000, "gid": 1000})
    entry = entry_info(info, "/home/user/a", "a", (1000, 1000, "user"))
    assert entry.wire() == {
        "name": "a",
        "type": "FILE_TYPE_FILE",
        "path": "/home/user/a",
        "size": "5",  # int64: a string
        "mode": 0o644,
        "permissions": "-rw-r--r--",
        "owner": "user",
        "group": "user",
        "modifiedTime": "1970-01-01T00:00:00.500000Z",
    }
    root_dir = FileInfo.model_validate(
        {**agent, "path": "/", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "owner": "root"}
    )
    described = entry_info(root_dir, "/", "/", (1000, 1000, "user")).wire()
    assert (described["type"], described["permissions"], described["owner"]) == (
        "FILE_TYPE_DIRECTORY",
        "drwxr-xr-x",
        "root",
    )


def test_a_symlink_is_stated_as_envd_does_and_listed_as_a_link() -> None:
    link = {"type": "symlink", "size": 8, "mode": 0o777, "mtime": 0.0, "uid": 1000, "gid": 1000, "target": "test.txt"}
    user = (1000, 1000, "user")
    listed = entry_info(FileInfo.model_validate({**link, "path": "l"}), "/home/user/l", "l", user).wire()
    assert (listed["type"], listed["permissions"], listed["symlinkTarget"]) == (
        "FILE_TYPE_SYMLINK",
        "Lrwxrwxrwx",
        "test.txt",
    )
    resolved = {**link, "resolved": "/home/user/test.txt", "resolved_type": "file", "resolved_mode": 0o644}
    stated = entry_info(FileInfo.model_validate({**resolved, "path": "l"}), "/home/user/l", "l", user).wire()
    assert (stated["type"], stated["mode"], stated["symlinkTarget"]) == ("FILE_TYPE_FILE", 0o644, "/home/user/test.txt")
