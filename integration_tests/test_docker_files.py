"""``box_fs_*``: file operations done by the in-sandbox agent, on real Docker sandboxes."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from boxruntime.protocol import Peer
from integration_tests.daemon import Daemon, connect

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def fs(peer: Peer, action: str, **data: Any) -> dict[str, Any]:
    return await peer.call(f"box_fs_{action}", {"session_id": "f", **data}, timeout=60)


async def session(peer: Peer, **spec: Any) -> None:
    await peer.call("box_create_session", {"session_id": "f", **spec}, timeout=120)


async def test_write_read_round_trip_text_and_binary(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        await session(peer)
        wrote = await fs(peer, "write", path="notes/a.txt", data="héllo\n")
        assert wrote["path"] == "/workspace/notes/a.txt" and wrote["bytes_written"] == 7
        text = await fs(peer, "read", path="/workspace/notes/a.txt", encoding="utf-8")
        assert (text["data"], text["size"], text["eof"]) == ("héllo\n", 7, True)
        blob = bytes(range(256)) * 10
        await fs(peer, "write", path="bin/x.dat", data=base64.b64encode(blob).decode(), encoding="base64", mode=0o600)
        back = await fs(peer, "read", path="bin/x.dat")
        assert base64.b64decode(back["data"]) == blob and back["mode"] == 0o600
        seen = await peer.call("box_exec", {"session_id": "f", "cmd": "sha256sum bin/x.dat | cut -c1-16"}, timeout=60)
        import hashlib

        assert seen["stdout"] == hashlib.sha256(blob).hexdigest()[:16]
        with pytest.raises(BoxValidationError, match="not UTF-8"):
            await fs(peer, "read", path="bin/x.dat", encoding="utf-8")


async def test_large_files_move_in_chunks(daemon: Daemon) -> None:
    chunk = os.urandom(3 * 1024 * 1024)
    async with connect(daemon) as peer:
        await session(peer)
        for i in range(3):
            await fs(
                peer, "write", path="big.bin", data=base64.b64encode(chunk).decode(), encoding="base64", append=i > 0
            )
        assert (await fs(peer, "stat", path="big.bin"))["size"] == 3 * len(chunk)
        got = bytearray()
        offset = 0
        while True:
            part = await fs(peer, "read", path="big.bin", offset=offset, length=4 * 1024 * 1024)
            got += base64.b64decode(part["data"])
            offset += part["length"]
            if part["eof"]:
                break
        assert bytes(got) == chunk * 3
        with pytest.raises(BoxValidationError):
            await fs(peer, "read", path="big.bin", length=9 * 1024 * 1024)  # over the per-call cap


async def test_list_stat_remove(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        await session(peer)
        for name in ("d/one.txt", "d/sub/two.txt", "d/.hidden"):
            await fs(peer, "write", path=name, data="x")
        flat = await fs(peer, "list", path="d")
        assert [(e["name"], e["type"]) for e in flat["entries"]] == [
            (".hidden", "file"),
            ("one.txt", "file"),
            ("sub", "dir"),
        ]
        deep = await fs(peer, "list", path="d", recursive=True, include_hidden=False)
        assert [e["path"] for e in deep["entries"]] == ["one.txt", "sub", "sub/two.txt"]
        capped = await fs(peer, "list", path="d", recursive=True, max_entries=2)
        assert capped["truncated"] is True and len(capped["entries"]) == 2
        assert (await fs(peer, "stat", path="d/missing"))["exists"] is False
        with pytest.raises(BoxValidationError, match="Directory not empty"):
            await fs(peer, "remove", path="d")
        assert (await fs(peer, "remove", path="d", recursive=True))["type"] == "dir"
        assert (await fs(peer, "stat", path="d"))["exists"] is False


async def test_paths_cannot_escape_the_workspace(daemon: Daemon) -> None:
    async with connect(daemon) as peer:
        await session(peer)
        await peer.call("box_exec", {"session_id": "f", "cmd": "ln -s /etc link; ln -s / root"}, timeout=60)
        for path in ("../etc/passwd", "/etc/passwd", "link/passwd", "root/etc/hostname", "/opt/boxruntime/boxagent.py"):
            with pytest.raises(BoxValidationError, match="outside the sandbox workspace"):
                await fs(peer, "read", path=path)
        with pytest.raises(BoxValidationError, match="outside the sandbox workspace"):
            await fs(peer, "write", path="link/evil", data="x")
        with pytest.raises(BoxValidationError, match="refusing to remove"):
            await fs(peer, "remove", path="/workspace", recursive=True)
        # The link itself lives in the workspace: stat and remove act on it, not its target.
        assert (await fs(peer, "stat", path="link"))["target"] == "/etc"
        await fs(peer, "remove", path="link")
        assert (await fs(peer, "write", path="/tmp/scratch", data="ok"))["size"] == 2
        with pytest.raises(BoxValidationError, match="not a regular file"):
            await fs(peer, "read", path="/tmp")


async def test_read_only_mounts_and_missing_sessions(daemon: Daemon) -> None:
    source = daemon.data_dir / "ro-src"
    source.mkdir()
    (source / "doc.md").write_text("read me")
    async with connect(daemon) as peer:
        await session(peer, extra_mounts=[{"host_path": str(source), "mount_path": "/data", "mode": "ro"}])
        assert (await fs(peer, "read", path="/data/doc.md", encoding="utf-8"))["data"] == "read me"
        with pytest.raises(BoxValidationError, match="Read-only file system"):
            await fs(peer, "write", path="/data/new", data="x")
        with pytest.raises(BoxSessionNotFoundError):
            await peer.call("box_fs_read", {"session_id": "nope", "path": "x"}, timeout=60)
