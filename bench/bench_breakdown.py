"""Where ours' warm exec goes: the exec next to its two floors, measured in the same run.

- ``exec``: ``box_exec`` of the bench's command through LangBot's client, as in the warm section;
- ``noop``: ``box_get_session`` through LangBot's client: its client, the websocket and our
  dispatch, with no sandbox work (a dictionary lookup);
- ``agent_run``: the same command run by the session's agent, asked directly over its unix socket
  by an AgentClient in this process: the sandbox side with no RPC and no daemon;
- ``agent_ping``: one request/reply with that agent, no process: the hop alone.

When ``exec`` is about ``noop`` plus ``agent_run``, the daemon adds next to nothing between the
two (a rough reading: this process runs asyncio's default loop, the daemon uvloop). Each kind
runs in blocks, after the same pause as the warm section, and only back-to-back samples are
kept, so each kind's samples see the same conditions as the warm exec's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_harness import OURS, BenchError, Shape, Side, check_error_budget, check_result, log, timed
from bench_sections import WARM_BLOCK, WARM_SETTLE_SEC

from boxruntime.backends.agent.backend import sandbox_env
from boxruntime.backends.agent.client import AGENT_SOCKET_NAME, AgentClient
from boxruntime.backends.agent.commands import CommandRequest
from boxruntime.models.box import OUTPUT_CAP_BYTES

KINDS = ("exec", "noop", "agent_run", "agent_ping")


def agent_socket_dir(data_dir: Path, sandbox_id: str) -> Path:
    """The agent socket directory of one of our sandboxes: ``<data>/sessions/<instance>/<key>/agent``,
    where a sandbox id is ``<prefix>-<instance>-<key>`` (Docker and nsjail alike)."""
    key = sandbox_id.split("-", 2)[2]
    found = sorted(data_dir.glob(f"sessions/*/{key}/agent/{AGENT_SOCKET_NAME}"))
    if not found:
        raise BenchError(f"no agent socket for sandbox {sandbox_id} under {data_dir}")
    return found[0].parent


async def bench_breakdown(side: Side, data_dir: Path, shape: Shape, rounds: int) -> dict[str, list[float]]:
    """Back-to-back samples (ms) of each kind, ``rounds`` of each, on one session of ours."""
    spec = shape.spec(OURS, f"bench-{shape.run_id}-parts")
    ms, _ = await timed(side, "box_create_session (breakdown)", lambda: side.client.create_session(spec))
    if ms is None:
        raise BenchError(f"{side.name}: could not create the breakdown session: {side.errors[-1]}")
    info = await side.client.get_session(spec.session_id)
    agent = AgentClient(agent_socket_dir(data_dir, info["backend_session_id"]), "bench")
    await agent.connect(timeout=30)
    # What the daemon asks the agent for a box_exec of this spec.
    # What the daemon asks the agent for an exec (AgentBackend.request): the same request here.
    command = CommandRequest(
        cwd=spec.workdir,
        env=sandbox_env(spec.env),
        script=shape.cmd,
        timeout=float(spec.timeout_sec),
        output_cap=OUTPUT_CAP_BYTES,
    )

    async def agent_run() -> None:
        done = await agent.run(command)
        if done.exit.code != 0 or done.stdout.strip() != b"hi":
            raise BenchError(f"agent run: exit {done.exit.code}, stdout {done.stdout[:200]!r}")

    async def exec_checked() -> None:
        check_result(side, await side.client.execute(spec), "hi")

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "exec": exec_checked,
        "noop": lambda: side.client.get_session(spec.session_id),
        "agent_run": agent_run,
        "agent_ping": agent.ping,
    }
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    log(f"breakdown: {rounds} back-to-back runs of each of {', '.join(KINDS)} on ours, in blocks of {WARM_BLOCK}")
    try:
        for i in range(-(-rounds // (WARM_BLOCK - 1))):
            for kind in KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]:  # each kind leads in turn
                await asyncio.sleep(WARM_SETTLE_SEC)
                for k in range(WARM_BLOCK):
                    ms, _ = await timed(side, f"breakdown {kind}", calls[kind])
                    if ms is not None and k > 0 and len(samples[kind]) < rounds:
                        samples[kind].append(ms)
            check_error_budget({OURS: side}, max(3, rounds // 20))
    finally:
        await agent.close()
        with contextlib.suppress(Exception):
            await side.client.delete_session(spec.session_id)
    return samples
