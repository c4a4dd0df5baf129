"""E2B's SDK against boxruntime's E2B front door, next to LangBot's action RPC on the same daemon.

One ``boxruntime serve`` (warm pool on, no token), three clients in one interleaved run:

- E2B's SDK, sync (``e2b.Sandbox``), configured as a user does (``api_url`` = ``sandbox_url`` =
  the daemon): ``sandbox.commands.run("echo hi")`` and ``Sandbox.create()``;
- E2B's SDK, async (``e2b.AsyncSandbox``), the same calls;
- LangBot's own client (``langbot-plugin``'s ``ActionRPCBoxClient`` over its WebSocket
  controller): ``box_exec`` ``echo hi`` and ``box_create_session``.

Warm exec: blocks of 20 back to back per client after a 0.5 s pause, the clients taking turns
to lead (as bench_exec.py measures); the first of a block is the "after idle" sample. Two
floors of the E2B exec are measured in the same blocks:

- ``sdk floor``: the sync SDK against a stub in this process that answers at once (no daemon,
  no sandbox): what the SDK and HTTP themselves cost;
- ``sandbox``: the sync sandbox's agent asked directly (an AgentClient over its unix socket) to
  run what the front door asks it for ``commands.run("echo hi")``: ``bash -l -c`` with envd's
  environment, no RPC, no daemon.

Create: each round waits for the warm pool to be full, then times one create per client (and
removes the sandbox, untimed); every timed create must be a pool hit (``box_status`` counters).

    .venv/bin/python bench/bench_e2b.py                    # Docker: about a minute
    .venv/bin/python bench/bench_e2b.py --backend nsjail
    .venv/bin/python bench/bench_e2b.py --warm 100 --create 10 --json /tmp/e2b.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_breakdown import agent_socket_dir
from bench_daemons import OURS_DATA, DaemonProc, free_port, preflight, start_ours
from bench_harness import DEFAULT_IMAGE, OURS, BenchError, Side, connect, disconnect, log, pool_status
from bench_report import pct, write_medians

from boxruntime.backends.agent.backend import sandbox_env
from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.commands import CommandRequest, Output
from boxruntime.edges.e2b.connect import end_stream, envelope
from boxruntime.edges.e2b.process_service import command_env
from boxruntime.edges.e2b.sandboxes import USER_HOME

BLOCK = 20
SETTLE_SEC = 0.5
KINDS = ("e2b_sync", "e2b_async", "langbot", "sdk_floor", "sandbox")
CREATORS = ("e2b_sync", "e2b_async", "langbot", "sdk_floor")
LABELS = {
    "e2b_sync": "E2B SDK (sync)",
    "e2b_async": "E2B SDK (async)",
    "langbot": "LangBot RPC",
    "sdk_floor": "sdk floor",
    "sandbox": "sandbox",
}
STUB_EVENTS = (
    {"event": {"start": {"pid": 1}}},
    {"event": {"data": {"stdout": "aGkK"}}},
    {"event": {"end": {"exited": True, "status": "exit status 0"}}},
)


class Clients:
    """The three ways in, each with one warm sandbox (or session) to run commands in."""

    def __init__(self, daemon: DaemonProc, side: Side, data_dir: Path) -> None:
        import e2b

        self.url = f"http://127.0.0.1:{daemon.port}"
        self.e2b = e2b.E2B(api_key="bench", api_url=self.url, sandbox_url=self.url)
        self.side = side
        self.data_dir = data_dir
        self.sync_box: Any = None
        self.async_box: Any = None
        self.lb_spec: Any = None
        self.stub = Stub()
        self.stub_box: Any = None
        self.stub_e2b: Any = None
        self.agent: AgentClient | None = None

    async def open(self) -> None:
        import e2b
        from langbot_plugin.box.models import BoxSpec

        self.sync_box = await asyncio.to_thread(self.e2b.Sandbox.create, timeout=3600)
        self.async_box = await self.e2b.AsyncSandbox.create(timeout=3600)
        self.lb_spec = BoxSpec(session_id="bench-e2b-langbot", image=DEFAULT_IMAGE, cmd="echo hi")
        await self.side.client.create_session(self.lb_spec)
        info = await self.side.client.get_session(f"e2b-{self.sync_box.sandbox_id}")
        self.agent = AgentClient(agent_socket_dir(self.data_dir, info["backend_session_id"]), "bench")
        await self.agent.connect(timeout=30)
        stub_url = self.stub.start()
        self.stub_e2b = e2b.E2B(api_key="stub", api_url=stub_url, sandbox_url=stub_url)
        self.stub_box = await asyncio.to_thread(self.stub_e2b.Sandbox.create)

    async def close(self) -> None:
        for box in (self.sync_box, self.async_box):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.e2b.Sandbox.kill, box.sandbox_id)
        with contextlib.suppress(Exception):
            await self.side.client.delete_session(self.lb_spec.session_id)
        if self.agent is not None:
            await self.agent.close()
        self.stub.stop()

    async def sandbox_run(self) -> bytes:
        """What the front door asks the sandbox's agent for ``commands.run("echo hi")``."""
        assert self.agent is not None
        request = CommandRequest(
            cwd=USER_HOME,
            env=sandbox_env(command_env({}, {})),
            argv=["/bin/bash", "-l", "-c", "echo hi"],
            timeout=60.0,
            notify_started=True,
            make_cwd=False,
        )
        proc = await self.agent.spawn(request)
        out = b""
        async for event in proc.events():
            if isinstance(event, Output):
                out += event.data
        return out

    async def exec_block(self, kind: str, count: int) -> list[float]:
        """``count`` runs of ``echo hi`` back to back, in milliseconds; each result checked."""
        if kind in ("e2b_sync", "sdk_floor"):
            box = self.sync_box if kind == "e2b_sync" else self.stub_box
            return await asyncio.to_thread(self._sync_block, box, count)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            if kind == "e2b_async":
                out = (await self.async_box.commands.run("echo hi")).stdout
            elif kind == "sandbox":
                out = (await self.sandbox_run()).decode()
            else:
                out = (await self.side.client.execute(self.lb_spec)).stdout + "\n"
            samples.append((time.perf_counter() - start) * 1000)
            if out != "hi\n":
                raise BenchError(f"{LABELS[kind]}: unexpected output {out!r}")
        return samples

    @staticmethod
    def _sync_block(box: Any, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            out = box.commands.run("echo hi").stdout
            samples.append((time.perf_counter() - start) * 1000)
            if out != "hi\n":
                raise BenchError(f"E2B SDK (sync): unexpected output {out!r}")
        return samples

    def create_call(self, kind: str, round_no: int) -> Callable[[], Awaitable[Callable[[], Awaitable[None]]]]:
        """A timed create; it returns the untimed removal of what it made."""

        async def sync() -> Callable[[], Awaitable[None]]:
            box = await asyncio.to_thread(self._timed_sync_create)
            return lambda: asyncio.to_thread(box.kill)

        async def async_() -> Callable[[], Awaitable[None]]:
            box = await self.e2b.AsyncSandbox.create()
            return box.kill  # type: ignore[no-any-return]

        async def langbot() -> Callable[[], Awaitable[None]]:
            from langbot_plugin.box.models import BoxSpec

            spec = BoxSpec(session_id=f"bench-e2b-create-{round_no}", image=DEFAULT_IMAGE)
            await self.side.client.create_session(spec)
            return lambda: self.side.client.delete_session(spec.session_id)  # type: ignore[no-any-return]

        async def nothing() -> None:
            return None

        async def floor() -> Callable[[], Awaitable[None]]:
            await asyncio.to_thread(self.stub_e2b.Sandbox.create)
            return nothing  # the stub keeps nothing

        return {"e2b_sync": sync, "e2b_async": async_, "langbot": langbot, "sdk_floor": floor}[kind]

    def _timed_sync_create(self) -> Any:
        return self.e2b.Sandbox.create()


class Stub:
    """An envd that answers at once, on its own thread and loop: the SDK's floor."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        from aiohttp import web

        async def create(_request: web.Request) -> web.Response:
            body = {"templateID": "base", "sandboxID": "stub", "clientID": "stub", "envdVersion": "0.6.1"}
            return web.json_response(body, status=201)

        async def start(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "application/connect+json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write_eof(b"".join(envelope(e) for e in STUB_EVENTS) + end_stream())
            return response

        ready = threading.Event()
        port = free_port()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v2/sandboxes", create)
            app.router.add_post("/process.Process/Start", start)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="envd-stub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise BenchError("the SDK-floor stub did not start")
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


async def pool_full(side: Side, size: int, timeout: float = 90.0) -> dict[str, int]:
    """Wait until both pool shapes (LangBot's default and E2B's) hold ``size`` sandboxes."""
    deadline = time.monotonic() + timeout
    while True:
        pool = await pool_status(side) or {}
        if pool.get("ready", 0) >= 2 * size:
            return pool
        if time.monotonic() > deadline:
            raise BenchError(f"the warm pool did not fill within {timeout:.0f} s: {pool}")
        await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace, daemon: DaemonProc, data_dir: Path) -> dict[str, Any]:
    side = Side(OURS, "ours", daemon)
    await connect(side)
    clients = Clients(daemon, side, data_dir)
    try:
        await clients.open()
        await pool_full(side, args.pool_size)
        for kind in KINDS:  # warm-up, untimed
            await clients.exec_block(kind, 5)
        burst: dict[str, list[float]] = {k: [] for k in KINDS}
        idle: dict[str, list[float]] = {k: [] for k in KINDS}
        log(f"warm exec: {args.warm} runs of `echo hi` per client, in blocks of {BLOCK}")
        for i in range(-(-args.warm // BLOCK)):
            for kind in KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]:
                await asyncio.sleep(SETTLE_SEC)
                samples = await clients.exec_block(kind, min(BLOCK, args.warm - i * BLOCK))
                idle[kind].append(samples[0])
                burst[kind].extend(samples[1:])
        creates: dict[str, list[float]] = {k: [] for k in CREATORS}
        log(f"create: {args.create} rounds, each from a full warm pool")
        for i in range(args.create):
            for kind in CREATORS[i % 4 :] + CREATORS[: i % 4]:
                before = await pool_full(side, args.pool_size)
                start = time.perf_counter()
                remove = await clients.create_call(kind, i)()
                creates[kind].append((time.perf_counter() - start) * 1000)
                after = await pool_status(side) or {}
                if kind != "sdk_floor" and after.get("hits", 0) != before.get("hits", 0) + 1:
                    raise BenchError(f"{LABELS[kind]} create {i} was not served by the warm pool: {before} -> {after}")
                await remove()
    finally:
        await clients.close()
        await disconnect(side)
    return {"burst": burst, "after_idle": idle, "create": creates}


def table(samples: dict[str, Any]) -> str:
    rows = [
        ("warm exec `echo hi`, p50 back to back", samples["burst"], 50),
        ("warm exec `echo hi`, p95 back to back", samples["burst"], 95),
        ("warm exec `echo hi`, p50 after idle", samples["after_idle"], 50),
        ("create (warm pool hit), p50", samples["create"], 50),
    ]
    header = ["metric", *(LABELS[k] for k in KINDS)]
    body = [[label, *(cell(data.get(k), q) for k in KINDS)] for label, data, q in rows]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(row: list[str]) -> str:
        cells = (v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths, strict=True)))
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in body), line])


def cell(values: list[float] | None, q: float) -> str:
    value = pct(values, q) if values else None
    return "-" if value is None else f"{value:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("docker", "nsjail"), default="docker")
    parser.add_argument("--warm", type=int, default=200, help="timed warm execs per client")
    parser.add_argument("--create", type=int, default=10, help="timed creates per client")
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    if args.pool_size < 1:
        parser.error("--pool-size must be at least 1: the create figures are pool hits")
    try:
        log(f"preflight: {preflight(args.image, args.backend)}")
        with tempfile.TemporaryDirectory(prefix="bench-e2b-") as work:
            mounts = Path(work) / "mounts"
            mounts.mkdir()
            daemon = start_ours(Path(work), mounts, args.backend, args.image, args.pool_size)
            try:
                daemon.wait_listening()
                samples = asyncio.run(bench(args, daemon, Path(work) / OURS_DATA))
            finally:
                log(f"daemon {daemon.stop()}")
    except BenchError as exc:
        print(f"bench_e2b: {exc}", file=sys.stderr)
        return 1
    print(f"backend {args.backend}, {args.warm} warm execs and {args.create} creates per client")
    print(table(samples))
    if args.json:
        write_medians(args, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
