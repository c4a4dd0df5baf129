"""Shared plumbing for bench_exec.py: LangBot's client, session shapes, checks (the daemons as
processes are in bench_daemons.py).

Everything here drives both daemons the same way; only the daemon differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench_daemons import DaemonProc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = "boxruntime/sandbox:latest"
OURS, THEIRS = "ours", "theirs"
SIDES = (OURS, THEIRS)


class BenchError(Exception):
    """A problem that stops the benchmark, with a message meant for the user."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ── clients ──────────────────────────────────────────────────────────────


@dataclass
class Side:
    key: str  # OURS or THEIRS
    name: str
    daemon: DaemonProc | None  # None when LangBot's stdio controller started it (bench_stdio)
    client: Any = None
    task: asyncio.Task[None] | None = None
    errors: list[str] = field(default_factory=list)
    process: Any = None  # the stdio daemon's asyncio subprocess
    connection: Any = None  # LangBot's connection to a stdio daemon


async def connect(side: Side) -> None:
    """Connect LangBot's ActionRPCBoxClient to ``side`` exactly as LangBot's connector does."""
    from langbot_plugin.box.client import ActionRPCBoxClient
    from langbot_plugin.runtime.io.controllers.ws.client import WebSocketClientController
    from langbot_plugin.runtime.io.handler import Handler

    client = ActionRPCBoxClient(logging.getLogger(f"bench.{side.name}"))
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_connection(connection: Any) -> None:
        handler = Handler(connection)
        client.set_handler(handler)
        ready.set_result(None)
        await handler.run()

    async def on_failure(_controller: Any, exc: Exception | None) -> None:
        if not ready.done():
            ready.set_exception(BenchError(f"could not connect to {side.daemon.url}: {exc}"))

    controller = WebSocketClientController(side.daemon.url, on_failure)
    side.task = asyncio.create_task(controller.run(on_connection))
    await asyncio.wait_for(ready, 20)
    side.client = client
    await client.initialize()  # box_health, as LangBot does


async def disconnect(side: Side) -> None:
    if side.task is not None:
        side.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await side.task


# ── measurement ──────────────────────────────────────────────────────────


@dataclass
class Shape:
    """The session spec given to both daemons (one that works on both)."""

    image: str
    mode: str
    mount_root: Path
    run_id: str
    cmd: str

    def spec(self, side: str, session_id: str) -> Any:
        from langbot_plugin.box.models import BoxSpec

        fields: dict[str, Any] = {"session_id": session_id, "image": self.image, "cmd": self.cmd}
        if self.mode == "mount":
            # LangBot's usual shape: the workspace is a host directory, the root filesystem read-only.
            host = self.mount_root / side / session_id
            host.mkdir(parents=True, exist_ok=True)
            fields.update(host_path=str(host), host_path_mode="rw", read_only_rootfs=True)
        else:
            fields.update(read_only_rootfs=False)
        return BoxSpec(**fields)

    def pool_spec(self, side: str, session_id: str, *, memory_mb: int = 512, read_only_rootfs: bool = True) -> Any:
        """No host mount, no extra mounts, default resources unless told: a spec our warm pool serves."""
        from langbot_plugin.box.models import BoxSpec

        return BoxSpec(
            session_id=session_id,
            image=self.image,
            cmd=self.cmd,
            memory_mb=memory_mb,
            read_only_rootfs=read_only_rootfs,
        )


def check_result(side: Side, result: Any, expected: str) -> None:
    status = getattr(result.status, "value", result.status)
    if status != "completed" or result.exit_code != 0 or result.stdout.strip() != expected:
        side.errors.append(
            f"unexpected exec result: status={status} exit_code={result.exit_code} "
            f"stdout={result.stdout[:200]!r} stderr={result.stderr[:300]!r}"
        )


async def timed(side: Side, what: str, call: Callable[[], Awaitable[Any]]) -> tuple[float | None, Any]:
    """Run ``call``; return (milliseconds, result), or (None, None) on failure (recorded on ``side``)."""
    start = time.perf_counter()
    try:
        result = await call()
    except Exception as exc:
        side.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return None, None
    return (time.perf_counter() - start) * 1000, result


def round_order(i: int) -> tuple[str, str]:
    return SIDES if i % 2 == 0 else (THEIRS, OURS)


def check_error_budget(sides: dict[str, Side], limit: int) -> None:
    for side in sides.values():
        if len(side.errors) > limit:
            shown = "\n  ".join(side.errors[:5])
            raise BenchError(f"{side.name}: {len(side.errors)} failed calls, first ones:\n  {shown}")


# ── helpers for the extended sections ───────────────────────────────────

LONG_ACTION_TIMEOUT = 180.0


async def call_action(side: Side, action: str, data: dict[str, Any], timeout: float = LONG_ACTION_TIMEOUT) -> Any:
    """Call a Box action through LangBot's client with a longer timeout than its wrappers use.

    ``ActionRPCBoxClient.create_session`` waits 15 s and ``delete_session`` 30 s. With many
    creations in flight at once a daemon that serialises them can take longer than that for the
    last ones; the same call with a longer client-side timeout measures when it really finishes.
    """
    from langbot_plugin.box.actions import LangBotToBoxAction

    return await side.client._call(LangBotToBoxAction(action), data, timeout=timeout)


async def pool_status(side: Side) -> dict[str, int] | None:
    """Our ``box_status`` pool block ({size, ready, hits, misses}), or None if the daemon has none."""
    status = await side.client.get_status()
    pool = status.get("pool") if isinstance(status, dict) else None
    return pool if isinstance(pool, dict) else None


@dataclass
class PoolWatch:
    """Waits for our warm pool to be full, so pool refills never overlap a measurement."""

    side: Side
    size: int
    timeout: float = 90.0
    gave_up: bool = False
    waited_s: list[float] = field(default_factory=list)

    async def settle(self) -> dict[str, int] | None:
        if self.size <= 0:
            return None
        start = time.monotonic()
        pool = await pool_status(self.side)
        while not self.gave_up and (pool is None or pool.get("ready", 0) < self.size):
            if time.monotonic() - start > self.timeout:
                self.gave_up = True
                self.side.errors.append(
                    f"warm pool did not fill within {self.timeout:.0f} s (box_status pool = {pool}); "
                    "not waiting for it again"
                )
                log(f"warning: {self.side.errors[-1]}")
                break
            await asyncio.sleep(0.05)
            pool = await pool_status(self.side)
        self.waited_s.append(round(time.monotonic() - start, 3))
        return pool


def process_memory(pid: int) -> dict[str, Any]:
    """RSS of the daemon process itself (MiB), plus its children's, listed separately, for reference."""
    import psutil

    proc = psutil.Process(pid)
    info: dict[str, Any] = {
        "pid": pid,
        "cmdline": " ".join(proc.cmdline())[:300],
        "rss_mib": proc.memory_info().rss / 2**20,
    }
    with contextlib.suppress(psutil.Error):
        info["uss_mib"] = proc.memory_full_info().uss / 2**20
    children = []
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            children.append(
                {"pid": child.pid, "name": child.name(), "rss_mib": round(child.memory_info().rss / 2**20, 1)}
            )
    info["children_not_counted"] = children
    info["children_rss_mib_total"] = round(sum(c["rss_mib"] for c in children), 1)
    return info
