"""Private workspaces outlive their daemon, and are swept only when nobody can come back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from boxruntime.ids import safe_key
from integration_tests.daemon import connect, start_daemon

pytestmark = [pytest.mark.anyio]

TTL = {"BOXRUNTIME_WORKSPACE_TTL_SEC": "1"}


def workspace(data_dir: Path, session: str) -> Path:
    return data_dir / "workspaces" / safe_key(session)


async def test_sweep_keeps_persistent_and_in_use_workspaces(data_dir: Path) -> None:
    first = start_daemon(data_dir, "--backend", "nsjail", env=TTL)
    try:
        async with connect(first) as peer:
            for session, persistent in (("gone", False), ("kept", True)):
                spec = {"session_id": session, "cmd": "echo data > f", "persistent": persistent}
                assert (await peer.call("box_exec", spec, timeout=60))["exit_code"] == 0
    finally:
        first.stop()
    # Both outlive the daemon: a later daemon (or `boxruntime exec --session`) finds the files.
    assert (workspace(data_dir, "gone") / "files" / "f").exists()
    assert (workspace(data_dir, "kept") / "files" / "f").exists()

    holder = start_daemon(data_dir, "--backend", "nsjail", env=TTL)
    try:
        async with connect(holder) as peer:
            await peer.call("box_exec", {"session_id": "live", "cmd": "echo mine > f"}, timeout=60)
            live = workspace(data_dir, "live")
            past = time.time() - 3600
            os.utime(live, (past, past))  # looks long idle; only its lease protects it
            await anyio.sleep(1.5)  # past the 1 s TTL for "gone", released when the first daemon stopped
            sweeper = start_daemon(data_dir, "--backend", "nsjail", env=TTL)  # sweeps at start
            sweeper.stop()
            assert not workspace(data_dir, "gone").exists()
            assert (workspace(data_dir, "kept") / "files" / "f").read_text() == "data\n"
            assert (live / "files" / "f").read_text() == "mine\n"
            again = await peer.call("box_exec", {"session_id": "live", "cmd": "cat f"}, timeout=60)
            assert again["stdout"] == "mine"
    finally:
        holder.stop()
