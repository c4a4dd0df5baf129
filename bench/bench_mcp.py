"""MCP tools/call round trip through a Box session: langbot_bridge.mcp over our daemon's relay.

One run, ours only: LangBot 0.5 (``langbot-plugin==0.5.0a2``) has no MCP client to compare
with (its ``box`` package has the relay endpoint and a URL helper; LangBot's MCP client lives
in LangBot Core). For reference the same run measures the raw relay round trip (one JSON-RPC
line to ``cat`` and back, no MCP server), and an MCP ``ping``.

    .venv/bin/python bench/bench_mcp.py                    # nsjail, about 30 s
    .venv/bin/python bench/bench_mcp.py --backend docker   # needs the engine and the image
    .venv/bin/python bench/bench_mcp.py --rounds 1000 --json /tmp/bench-mcp.json

The sandbox gets the MCP SDK the way the integration tests give it (this venv's installed
distributions, copied into a read-only mount; the image has no pip and no network), and runs
the tests' small MCP server, whose ``echo`` tool answers with its argument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_daemons import preflight, start_ours
from bench_harness import DEFAULT_IMAGE, BenchError, log
from bench_report import mean, pct

from boxruntime.models import ManagedProcessSpec
from integration_tests.mcp_site import FIXTURE_MODULE, build_mcp_root, fixture_spec, mounts
from langbot_bridge import BoxService, Connector, RemoteTarget
from langbot_bridge.mcp import BoxMcpServer, McpHub

CALL = "MCP tools/call echo, in the box"
PING = "MCP ping, in the box"
RAW = "raw relay round trip (cat), in the box"
HOST = "MCP tools/call echo, host stdio (no box)"


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def open_cat(service: BoxService, hub: McpHub, daemon_port: int) -> tuple[aiohttp.ClientSession, Any]:
    """A ``cat`` managed process in the hub's session, and a relay socket to it (as a relay
    client connects: subprotocol ``mcp``)."""
    spec = ManagedProcessSpec(process_id="bench-cat", command="cat")
    await service.start_process(hub.session_id, spec, hub.session_request)
    http = aiohttp.ClientSession()
    url = f"ws://127.0.0.1:{daemon_port}/v1/sessions/{hub.session_id}/managed-process/bench-cat/ws"
    return http, await http.ws_connect(url, protocols=("mcp",), max_msg_size=16 << 20)


async def raw_round_trip(ws: Any, i: int) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo"}})
    await ws.send_str(line)
    reply = await ws.receive(timeout=10)
    if reply.data != line:
        raise BenchError(f"cat echoed {reply.data!r:.200} for {line!r}")


@contextlib.asynccontextmanager
async def host_server(root: Path) -> AsyncIterator[ClientSession]:
    """The same server as a plain stdio subprocess of this process (the SDK's stdio client):
    what an MCP call costs without the box."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", FIXTURE_MODULE], env={"PYTHONPATH": str(root / "site")}
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def check_host_echo(session: ClientSession, i: int) -> None:
    result = await session.call_tool("echo", {"text": f"hi {i}"})
    if getattr(result.content[0], "text", None) != f"hi {i}":
        raise BenchError(f"host echo answered {result!r:.300}")


async def check_echo(server: BoxMcpServer, i: int) -> None:
    result = await server.call_tool("echo", {"text": f"hi {i}"})
    text = getattr(result.content[0], "text", None)
    if result.is_error or text != f"hi {i}":
        raise BenchError(f"echo answered {result!r:.300}")


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = build_mcp_root(work / "mcp")
    daemon = start_ours(work, root, args.backend, args.image, pool_size=0)
    figures: dict[str, Any] = {"samples": {CALL: [], PING: [], RAW: [], HOST: []}, "starts_ms": []}
    try:
        daemon.wait_listening()
        async with Connector(RemoteTarget(daemon.url)) as link:
            await link.wait_available(60)
            service = BoxService(link, allowed_mount_roots=[root])
            async with McpHub(service, bot="bench", session_request=mounts(root)) as hub:
                log("starting the MCP server in a new session (session, process, initialize)")
                start = time.perf_counter()
                server = await hub.start(fixture_spec())
                figures["first_start_ms"] = (time.perf_counter() - start) * 1000
                for _ in range(args.starts):  # the session exists: process start + initialize
                    figures["starts_ms"].append(await timed(server.restart))
                http, ws = await open_cat(service, hub, daemon.port)
                try:
                    async with host_server(root) as host:
                        steps: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
                            (CALL, lambda i: check_echo(server, i)),
                            (PING, lambda i: server.ping()),
                            (RAW, lambda i: raw_round_trip(ws, i)),
                            (HOST, lambda i: check_host_echo(host, i)),
                        ]
                        for i in range(args.warmup):
                            for _, step in steps:
                                await step(i)
                        log(f"{args.rounds} rounds of: {', '.join(name for name, _ in steps)} (order rotating)")
                        for i in range(args.rounds):
                            k = i % len(steps)
                            for name, step in steps[k:] + steps[:k]:
                                figures["samples"][name].append(await timed(functools.partial(step, i)))
                finally:
                    await ws.close()
                    await http.close()
                assert server.transport is not None
                figures["relay_reconnects"] = server.transport.reconnects
    finally:
        figures["daemon_stop"] = daemon.stop()
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> str:
    rows: list[tuple[str, ...]] = [("metric", "p50", "p95", "mean")]
    for name, values in figures["samples"].items():
        rows.append(
            (f"{name} (n={len(values)})", *(f"{v:.2f} ms" for v in (pct(values, 50), pct(values, 95), mean(values))))
        )
    starts = figures["starts_ms"]
    if starts:
        rows.append((f"restart: process start + initialize (n={len(starts)})", f"{pct(starts, 50):.1f} ms", "", ""))
    rows.append(("first start: session + process + initialize (n=1)", f"{figures['first_start_ms']:.1f} ms", "", ""))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    body = [
        "| "
        + " | ".join(cell.ljust(widths[c]) if c == 0 else cell.rjust(widths[c]) for c, cell in enumerate(row))
        + " |"
        for row in rows
    ]
    return "\n".join([line, body[0], line, *body[1:], line, f"backend {args.backend}; ours only (see the docstring)"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("nsjail", "docker", "gvisor"), default="nsjail")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--starts", type=int, default=3, help="timed restarts of the server (0 skips)")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    try:
        preflight(args.image, args.backend)
        with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
            figures = asyncio.run(run(args, Path(tmp)))
    except BenchError as exc:
        print(f"bench_mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(report(figures, args))
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, **figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
