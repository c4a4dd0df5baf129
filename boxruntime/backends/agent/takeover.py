"""Taking over an agent sandbox a dead daemon left: its host state, its agent, its kept
processes (the agent backends' side of ``Backend.recover`` and ``recover_process``).

The dead daemon's host state of a sandbox (``<data>/sessions/<instance>/<name>``: the agent's
socket directory, jail files, a workspace carrier) is renamed under this instance: the sandbox
keeps what it has mounted, since a bind mount holds the directory, not its name. The agent is
reached again through the moved socket directory; each kept process is adopted
(``AgentClient.adopt``: its pipes again, then its events), and the ones no record names are
ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.pipes import ProcessPipes
from boxruntime.backends.agent.process import AgentCommand
from boxruntime.errors import BoxSandboxError

log = logging.getLogger(__name__)

RECOVER_CONNECT_SEC = 5.0  # a recovered sandbox's agent answers at once, or the sandbox is lost


def claim_state(described: Mapping[str, Any], state_dir: Callable[[str], Path]) -> Path | None:
    """Move the state directory ``described`` names to ``state_dir(its name)``; the new path,
    or None if there is none to take."""
    old = described.get("state_dir")
    if not isinstance(old, str) or not old:
        return None
    source = Path(old)
    target = state_dir(source.name)
    if source == target:
        return target if target.is_dir() else None
    if target.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    return target


async def reconnect(socket_dir: Path, name: str, pass_fds: bool) -> AgentClient | None:
    """A connection to a recovered sandbox's agent, or None if it does not answer."""
    agent = AgentClient(socket_dir, name, pass_fds=pass_fds)
    try:
        await agent.connect(timeout=RECOVER_CONNECT_SEC)
        return agent
    except BoxSandboxError as exc:
        log.warning("sandbox %s: its agent does not answer: %s", name, exc)
        await agent.close()
        return None


async def adopt_process(agent: AgentClient, ref: str, pid: int | None) -> AgentCommand | None:
    """The kept process ``ref`` as the contract's Process, reading its own pipes again."""
    try:
        proc, handed = await agent.adopt(ref, pid)
    except BoxSandboxError as exc:
        log.warning("sandbox %s: process %s is gone: %s", agent.name, ref, exc)
        return None
    process = AgentCommand(proc, piped=True)
    try:
        process.use_pipes(await ProcessPipes.open(handed, process.on_pipe_data))
    except BaseException:
        process.cancel()
        await process.close()
        raise
    return process


async def end_strays(agent: AgentClient, known: Collection[str]) -> list[str]:
    """Kill the kept processes that were detached at connect and are not ``known``. One whose
    pipes cannot be taken (its stdio were the dead daemon's sockets: ``pass_fds`` False) is
    attached without them, so its exit is still reported and the agent forgets it."""
    ended = []
    for ref in agent.detached_at_start:
        if ref in known:
            continue
        try:
            if agent.pass_fds:
                proc, handed = await agent.adopt(ref, None)
                for fd in (handed.stdin, handed.stdout, handed.stderr):
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            else:
                proc = await agent.attach(ref, None)
            await proc.signal(signal.SIGKILL, cancel=True)
        except BoxSandboxError as exc:
            log.warning("sandbox %s: stray process %s not ended: %s", agent.name, ref, exc)
            continue
        ended.append(ref)
    return ended
