"""The agent tools against real Docker sessions through a real WebSocket daemon: exec, read,
write (binary-safe), edit (conflicts), glob, grep — everything inside the sandbox."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration_tests.daemon import Daemon
from langbot_bridge import BoxService, BoxTools, ChatContext, Connector, RemoteTarget

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ALICE = ChatContext(launcher_type="person", launcher_id="alice")
BOB = ChatContext(launcher_type="person", launcher_id="bob")


@pytest.fixture
async def tools(daemon: Daemon) -> AsyncIterator[BoxTools]:
    async with Connector(RemoteTarget(daemon.url)) as connector:
        await connector.wait_available(60)
        yield BoxTools(BoxService(connector))


async def call(tools: BoxTools, name: str, chat: ChatContext = ALICE, **arguments: Any) -> dict[str, Any]:
    return await tools.call(name, arguments, chat)


async def ok(tools: BoxTools, name: str, chat: ChatContext = ALICE, **arguments: Any) -> dict[str, Any]:
    result = await call(tools, name, chat, **arguments)
    assert result["ok"], result
    return result


async def sh(tools: BoxTools, command: str, chat: ChatContext = ALICE) -> str:
    return str((await ok(tools, "exec", chat, command=command))["stdout"])


# ── exec ────────────────────────────────────────────────────────────────


async def test_exec_runs_in_the_chats_sandbox(tools: BoxTools) -> None:
    assert len(tools.definitions()) == 6
    result = await ok(tools, "exec", command="pwd; id -u; echo $GREETING", env={"GREETING": "hi"})
    assert result["stdout"].splitlines() == ["/workspace", "1000", "hi"]
    assert result["session_id"] == "person_alice" and result["status"] == "completed"
    failed = await call(tools, "exec", command="echo oops >&2; exit 4")
    assert failed["ok"] is False and failed["exit_code"] == 4 and failed["stderr"] == "oops"
    assert failed["error"] == "command exited with code 4"


async def test_exec_output_is_cut_for_the_model(tools: BoxTools) -> None:
    result = await ok(tools, "exec", command="seq 1 20000")
    assert result["stdout_truncated"] is True and not result["stderr_truncated"]
    text = result["stdout"]
    assert text.startswith("1\n2\n3\n") and text.endswith("19999\n20000")
    assert "characters truncated" in text and len(text) < 4100


async def test_exec_timeout_is_reported(tools: BoxTools) -> None:
    result = await call(tools, "exec", command="sleep 30", timeout_sec=1)
    assert result["ok"] is False and result["status"] == "timed_out"
    assert "timed out" in result["error"]


async def test_chats_get_separate_sandboxes(tools: BoxTools) -> None:
    await ok(tools, "write", ALICE, path="secret.txt", content="alice's")
    assert (await call(tools, "read", BOB, path="secret.txt"))["error"] == "no such file or directory: secret.txt"
    assert (await ok(tools, "read", ALICE, path="secret.txt"))["content"] == "alice's"


# ── read / write ────────────────────────────────────────────────────────


async def test_write_then_read_text_by_lines(tools: BoxTools) -> None:
    body = "".join(f"line {i} — ü\n" for i in range(1, 11))
    wrote = await ok(tools, "write", path="docs/notes.md", content=body)
    assert wrote["path"] == "/workspace/docs/notes.md" and wrote["bytes_written"] == len(body.encode())
    whole = await ok(tools, "read", path="docs/notes.md")
    assert whole["content"] == body and (whole["start_line"], whole["end_line"]) == (1, 10) and not whole["truncated"]
    window = await ok(tools, "read", path="/workspace/docs/notes.md", offset=3, limit=2)
    assert window["content"] == "line 3 — ü\nline 4 — ü\n"
    assert window["truncated"] and window["truncated_by"] == "lines" and window["next_offset"] == 5
    capped = await ok(tools, "read", path="docs/notes.md", max_bytes=30)
    assert capped["content"] == "line 1 — ü\nline 2 — ü\n" and capped["truncated_by"] == "bytes"
    past = await call(tools, "read", path="docs/notes.md", offset=50)
    assert past["error"] == "offset 50 is past the end of docs/notes.md (10 lines)"
    await ok(tools, "write", path="docs/notes.md", content="line 11\n", mode="append")
    assert (await ok(tools, "read", path="docs/notes.md", offset=11))["content"] == "line 11\n"


async def test_write_then_read_binary_is_byte_exact(tools: BoxTools) -> None:
    blob = bytes(range(256)) * 64 + os.urandom(100_000) + b"\r\n\0\n"
    await ok(tools, "write", path="bin/blob.dat", content=base64.b64encode(blob).decode(), encoding="base64")
    got = bytearray()
    offset = 0
    while True:
        part = await ok(tools, "read", path="bin/blob.dat", encoding="base64", byte_offset=offset)
        got += base64.b64decode(part["content"])
        assert part["size_bytes"] == len(blob)
        if not part["has_more"]:
            break
        offset = part["next_byte_offset"]
    assert bytes(got) == blob
    inside = await sh(tools, "sha256sum bin/blob.dat | cut -d' ' -f1")
    assert inside == hashlib.sha256(blob).hexdigest()
    text = await call(tools, "read", path="bin/blob.dat")
    assert text["ok"] is False and "not UTF-8 text" in text["error"] and "base64" in text["error"]
    bad = await call(tools, "write", path="x", content="@@not base64@@", encoding="base64")
    assert bad["error"] == "content is not valid base64"


async def test_read_lists_a_directory(tools: BoxTools) -> None:
    for name in ("d/b.txt", "d/a.txt", "d/sub/c.txt"):
        await ok(tools, "write", path=name, content="x")
    listing = await ok(tools, "read", path="d")
    assert listing["is_directory"] and listing["content"] == "a.txt\nb.txt\nsub/" and listing["total"] == 3


async def test_paths_outside_the_sandbox_workspace_are_refused(tools: BoxTools) -> None:
    for name, arguments in [
        ("read", {"path": "/etc/passwd"}),
        ("write", {"path": "../../etc/evil", "content": "x"}),
        ("edit", {"path": "/etc/hostname", "old_string": "a", "new_string": "b"}),
    ]:
        result = await tools.call(name, arguments, ALICE)
        assert result["ok"] is False and "outside the sandbox workspace" in result["error"], (name, result)
    tmp = await ok(tools, "write", path="/tmp/scratch.txt", content="ok")  # /tmp is allowed
    assert tmp["path"] == "/tmp/scratch.txt"


# ── edit ────────────────────────────────────────────────────────────────


async def test_edit_replaces_one_exact_match(tools: BoxTools) -> None:
    await ok(tools, "write", path="app.py", content="def f():\n    return 1\n\ndef g():\n    return 1\n")
    await sh(tools, "chmod 750 app.py")
    result = await ok(
        tools, "edit", path="app.py", old_string="def g():\n    return 1", new_string="def g():\n    return 2"
    )
    assert result["replacements"] == 1
    assert await sh(tools, "cat app.py") == "def f():\n    return 1\n\ndef g():\n    return 2"
    assert await sh(tools, "stat -c %a app.py") == "750"  # the file keeps its mode


async def test_edit_conflicts_are_clear(tools: BoxTools) -> None:
    await ok(tools, "write", path="conf.ini", content="a=1\nb=1\nc=1\n")
    ambiguous = await call(tools, "edit", path="conf.ini", old_string="=1", new_string="=2")
    assert ambiguous["ok"] is False
    assert ambiguous["error"].startswith("old_string matches 3 locations in conf.ini")
    missing = await call(tools, "edit", path="conf.ini", old_string="d=1", new_string="d=2")
    assert missing["error"].startswith("old_string not found in conf.ini")
    same = await call(tools, "edit", path="conf.ini", old_string="a=1", new_string="a=1")
    assert "nothing to change" in same["error"]
    nofile = await call(tools, "edit", path="nope.ini", old_string="a", new_string="b")
    assert nofile["error"] == "no such file: nope.ini (use write to create it)"
    assert await sh(tools, "cat conf.ini") == "a=1\nb=1\nc=1"  # nothing changed by the failures
    every = await ok(tools, "edit", path="conf.ini", old_string="=1", new_string="=2", replace_all=True)
    assert every["replacements"] == 3
    assert await sh(tools, "cat conf.ini") == "a=2\nb=2\nc=2"


async def test_edit_refuses_files_over_its_limit(tools: BoxTools) -> None:
    await sh(tools, "head -c 1100000 /dev/zero | tr '\\0' a > big.txt")
    result = await call(tools, "edit", path="big.txt", old_string="a", new_string="b")
    assert result["ok"] is False and "edit works on files up to 1048576 bytes" in result["error"]


# ── glob / grep ─────────────────────────────────────────────────────────


async def make_project(tools: BoxTools) -> None:
    await sh(
        tools,
        "mkdir -p proj/src/pkg proj/node_modules/dep proj/.git && "
        "printf 'import os\\nTODO = 1\\n' > proj/src/main.py && "
        "printf 'def helper():\\n    return \"todo later\"\\n' > proj/src/pkg/util.py && "
        "printf 'TODO: docs\\n' > proj/README.md && "
        "printf 'TODO\\n' > proj/node_modules/dep/index.py && "
        "printf 'TODO\\n' > proj/.git/x.py && "
        "printf 'TODO\\0binary' > proj/blob.bin && "
        "touch -d '2020-01-01' proj/src/main.py && touch -d '2021-01-01' proj/src/pkg/util.py",
    )


async def test_glob_patterns_in_the_sandbox(tools: BoxTools) -> None:
    await make_project(tools)
    deep = await ok(tools, "glob", pattern="**/*.py", path="proj")
    assert deep["matches"] == ["/workspace/proj/src/pkg/util.py", "/workspace/proj/src/main.py"]  # newest first
    assert (await ok(tools, "glob", pattern="*.md", path="/workspace/proj"))["matches"] == ["/workspace/proj/README.md"]
    absolute = await ok(tools, "glob", pattern="/workspace/proj/src/*.py")
    assert absolute["matches"] == ["/workspace/proj/src/main.py"]
    assert (await ok(tools, "glob", pattern="*.rs", path="proj"))["matches"] == []
    missing = await call(tools, "glob", pattern="*", path="nowhere")
    assert missing == {"ok": False, "error": "no such directory: /workspace/nowhere"}


async def test_grep_across_files_in_the_sandbox(tools: BoxTools) -> None:
    await make_project(tools)
    result = await ok(tools, "grep", pattern="TODO", path="proj")
    found = sorted((m["file"], m["line"], m["content"]) for m in result["matches"])
    assert found == [("/workspace/proj/README.md", 1, "TODO: docs"), ("/workspace/proj/src/main.py", 2, "TODO = 1")]
    loose = await ok(tools, "grep", pattern="todo", path="proj", include="*.py", ignore_case=True)
    assert sorted(m["file"] for m in loose["matches"]) == [
        "/workspace/proj/src/main.py",
        "/workspace/proj/src/pkg/util.py",
    ]
    single = await ok(tools, "grep", pattern=r"return \"", path="proj/src/pkg/util.py")
    assert [(m["line"], m["content"]) for m in single["matches"]] == [(2, '    return "todo later"')]
    bad = await call(tools, "grep", pattern="(", path="proj")
    assert bad["ok"] is False and bad["error"].startswith("invalid regular expression")
