"""The agent's file operations that E2B's file API needs (make a directory, move, list to a
depth, owners) and its directory watch (inotify), against a real agent process on the host."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from boxruntime.backends.agent.client import AgentClient, AgentOpError
from boxruntime.backends.contract import FileChange as WatchEvent
from tests.test_agent import agent, agent_dir, anyio_backend  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio


async def fs(agent: AgentClient, op: str, **fields: object) -> dict[str, object]:  # noqa: F811
    reply, _ = await agent.request("fs", {"fs": op, "roots": ["/"], **fields})
    return reply


async def test_make_dir_move_and_list_to_a_depth(agent: AgentClient, tmp_path: Path) -> None:  # noqa: F811
    tmp_path = tmp_path / "files"  # beside the agent's socket directory
    tmp_path.mkdir()
    made = await fs(agent, "mkdir", path=f"{tmp_path}/a/b/c")
    assert made["type"] == "dir" and made["owner"] == pwd.getpwuid(os.getuid()).pw_name
    with pytest.raises(AgentOpError) as exists:
        await fs(agent, "mkdir", path=f"{tmp_path}/a/b")
    assert exists.value.code == "EEXIST"
    (tmp_path / "file").write_text("x")
    with pytest.raises(AgentOpError) as not_dir:
        await fs(agent, "mkdir", path=f"{tmp_path}/file")
    assert not_dir.value.code == "ENOTDIR"
    moved = await fs(agent, "move", path=f"{tmp_path}/file", destination=f"{tmp_path}/new/parent/file2")
    assert moved["path"] == f"{tmp_path}/new/parent/file2" and moved["size"] == 1
    assert (tmp_path / "new/parent/file2").read_text() == "x" and not (tmp_path / "file").exists()
    with pytest.raises(AgentOpError) as missing:
        await fs(agent, "move", path=f"{tmp_path}/nothing", destination=f"{tmp_path}/x")
    assert missing.value.code == "ENOENT"
    listing = await fs(agent, "list", path=str(tmp_path), recursive=True, max_depth=2)
    names = sorted(e["path"] for e in listing["entries"])  # type: ignore[attr-defined, index]
    assert names == ["a", "a/b", "new", "new/parent"]


async def test_watch_reports_what_happens_in_a_directory_and_below(agent: AgentClient, tmp_path: Path) -> None:  # noqa: F811
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    (tmp_path / "sub").mkdir()
    watch = await agent.watch({"path": str(tmp_path), "recursive": True, "roots": ["/"]})
    (tmp_path / "f.txt").write_text("hello")
    (tmp_path / "f.txt").chmod(0o600)
    (tmp_path / "f.txt").rename(tmp_path / "g.txt")
    (tmp_path / "sub" / "deep").mkdir()
    (tmp_path / "sub" / "deep" / "h").write_text("")  # in a directory made after the watch began
    (tmp_path / "g.txt").unlink()
    seen: list[WatchEvent] = []
    expected = WatchEvent("g.txt", "remove")
    while expected not in seen:
        seen.extend(await watch.next_batch())
    kinds = [(e.name, e.kind) for e in seen]
    assert kinds[:6] == [
        ("f.txt", "create"),
        ("f.txt", "write"),
        ("f.txt", "chmod"),
        ("f.txt", "rename"),
        ("g.txt", "create"),
        ("sub/deep", "create"),
    ]
    assert ("sub/deep/h", "create") in kinds
    watch.close()
    with pytest.raises(AgentOpError) as missing:
        await agent.watch({"path": str(tmp_path / "nope"), "roots": ["/"]})
    assert missing.value.code == "ENOENT"


async def test_files_that_say_size_zero_are_read_in_pieces(agent: AgentClient) -> None:  # noqa: F811
    # /proc files report size 0 and refuse to fill a megabytes-large read (sysctls: ENOMEM).
    reply, data = await agent.request("fs", {"fs": "read", "path": "/proc/sys/kernel/random/boot_id", "roots": ["/"]})
    assert reply["eof"] and len(data.strip()) == 36


async def test_a_request_the_agent_cannot_handle_fails_at_once(agent: AgentClient) -> None:  # noqa: F811
    with pytest.raises(AgentOpError, match="ValueError"):
        await agent.request(
            "fs", {"fs": "read", "path": "/etc/hostname", "offset": "not a number", "roots": ["/"]}, timeout=5
        )
