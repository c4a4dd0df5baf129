"""One request's size or content never breaks the agent or its connection (issue 16, hardening),
against a real agent process on the host: a timeout too long for its timer, a request that
cannot fit a frame, a reply that would not fit one, file operations that fail in the kernel,
and a path swapped for a symlink between its resolution and its opening."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from boxruntime.backends.agent.backend import AGENT_SOURCES
from boxruntime.backends.agent.client import AgentClient, AgentOpError
from boxruntime.backends.agent.commands import CommandRequest
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.errors import BoxSandboxError, BoxValidationError
from tests.test_agent import agent, agent_dir, anyio_backend, cmd  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio
MIB = 1 << 20


async def fs(client: AgentClient, op: str, **fields: object) -> dict[str, Any]:
    reply, _ = await client.request("fs", {"fs": op, "roots": ["/"], **fields}, timeout=5)
    return reply


async def test_a_timeout_longer_than_the_agents_timer_can_wait_does_not_end_the_agent(
    agent: AgentClient,  # noqa: F811
) -> None:
    # 30 days: the agent's select() takes int milliseconds, which hold 24.8 days.
    done = await agent.run(cmd("sleep 0.3; echo done", timeout=30 * 24 * 3600.0))
    assert done.stdout == b"done\n" and done.exit.reason == "exit"
    await agent.ping(timeout=5)
    assert agent.connected and agent.reconnects == 0


async def test_a_request_too_large_for_a_frame_is_refused_before_it_is_sent(agent: AgentClient) -> None:  # noqa: F811
    other = asyncio.ensure_future(agent.run(cmd("sleep 0.5; echo other")))
    await anyio.sleep(0.1)
    with pytest.raises(BoxValidationError, match="too large for the sandbox agent"):
        await agent.run(CommandRequest(cwd="/tmp", env={"HUGE": "x" * (2 * MIB)}, script="true"))
    with pytest.raises(BoxValidationError, match="too large for the sandbox agent"):
        await agent.request("fs", {"fs": "write", "path": "/tmp/x", "roots": ["/tmp"]}, b"x" * (wire.MAX_BODY + 1))
    assert (await other).stdout == b"other\n"  # the command in flight on the same connection
    assert agent.connected and agent.reconnects == 0


async def test_a_listing_too_large_for_one_reply_is_truncated_not_fatal(agent: AgentClient, tmp_path: Path) -> None:  # noqa: F811
    big = tmp_path / "big"
    big.mkdir()
    for i in range(6000):  # ~2.5 MB of entries as JSON: more than one frame header holds
        (big / f"{i:06d}-{'n' * 200}").touch()
    other = asyncio.ensure_future(agent.run(cmd("sleep 0.3; echo other")))
    reply = await fs(agent, "list", path=str(big), max_entries=100_000)
    assert reply["truncated"] is True and 0 < len(reply["entries"]) < 6000
    assert (await other).stdout == b"other\n"
    assert agent.connected and agent.reconnects == 0


async def test_file_operations_that_fail_in_the_kernel_answer_at_once_with_their_errno(
    agent: AgentClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    target = tmp_path / "f.txt"
    target.write_text("hello")
    cases = [
        ("read", {"path": str(target), "offset": 2**63}, "EINVAL"),
        ("read", {"path": str(target), "offset": -1}, "EINVAL"),
        ("write", {"path": str(target), "offset": 2**63}, "EINVAL"),
        ("remove", {"path": str(tmp_path / ("x" * 300))}, "ENAMETOOLONG"),
        ("stat", {"path": str(tmp_path / ("x" * 300))}, "ENAMETOOLONG"),
        ("read", {"path": str(tmp_path / "\udcff")}, "ENOENT"),
        ("list", {"path": str(target), "max_entries": "many"}, "EINVAL"),
    ]
    for op, fields, code in cases:
        with anyio.fail_after(2), pytest.raises(AgentOpError) as caught:
            await fs(agent, op, **fields)
        assert caught.value.code == code, (op, fields, str(caught.value))
    assert target.read_text() == "hello"
    await agent.ping(timeout=5)


@pytest.fixture
def agent_fs() -> Iterator[ModuleType]:
    """The agent's file operations, imported here to run them step by step."""
    sys.path.insert(0, str(AGENT_SOURCES))
    try:
        import boxagent_fs

        yield boxagent_fs
    finally:
        sys.path.remove(str(AGENT_SOURCES))


@contextlib.contextmanager
def swapped_after_resolving(module: ModuleType, swap: Callable[[], None]) -> Iterator[None]:
    """The race, made certain: ``swap`` runs right after the agent resolves a path, before it
    opens it (as a process in the sandbox could do at that moment)."""
    real = module.os.path.realpath
    swaps = [swap]

    def resolve_then_swap(path: str) -> str:
        resolved: str = real(path)
        if swaps and path.endswith(("/f", "/d")):
            swaps.pop()()
        return resolved

    module.os.path.realpath = resolve_then_swap
    try:
        yield
    finally:
        module.os.path.realpath = real


def test_a_file_swapped_for_a_symlink_after_resolution_is_not_followed(agent_fs: ModuleType, tmp_path: Path) -> None:
    root, secret = tmp_path / "root", tmp_path / "secret"
    root.mkdir()
    secret.write_text("secret")
    (root / "f").write_text("safe")

    def swap() -> None:
        (root / "f").unlink()
        (root / "f").symlink_to(secret)

    header = {wire.Fs.PATH: str(root / "f")}
    with swapped_after_resolving(agent_fs, swap), pytest.raises(agent_fs.FsError) as caught:
        agent_fs.read(header, b"", [str(root)], 1024)
    assert caught.value.code == "ELOOP"


def test_a_directory_swapped_for_a_symlink_after_resolution_is_not_followed(
    agent_fs: ModuleType, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("safe")
    outside.mkdir()
    (outside / "f").write_text("secret")

    def swap() -> None:
        os.rename(root / "d", tmp_path / "parked")
        (root / "d").symlink_to(outside)

    for op in (agent_fs.read, agent_fs.write):
        header = {wire.Fs.PATH: str(root / "d" / "f"), wire.Fs.MAKE_PARENTS: False}
        with swapped_after_resolving(agent_fs, swap), pytest.raises(agent_fs.FsError) as caught:
            op(header, b"overwritten", [str(root)], 1024)
        assert caught.value.code in ("ELOOP", "ENOTDIR"), caught.value
        assert (outside / "f").read_text() == "secret"
        (root / "d").unlink()
        os.rename(tmp_path / "parked", root / "d")


async def test_a_request_the_agent_does_not_answer_fails_with_a_typed_error_that_says_so(agent: AgentClient) -> None:  # noqa: F811
    with pytest.raises(BoxSandboxError, match="did not answer"):
        await agent.request(wire.Op.UNWATCH, {wire.Watch.WATCH: "w-none"}, timeout=0.2)  # unwatch has no reply
    await agent.ping(timeout=5)
