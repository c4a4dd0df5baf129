"""What LangBot 0.7 tenancy costs a warm exec: the same command, A/B interleaved in one run, on one
daemon, once from a client without a context (LangBot 0.5's rules) and once with a workspace
context (instance header, context on every request, logical -> physical ids, the generation
fence). Target (issue 13): the context adds at most 0.1 ms at p50.

    .venv/bin/python bench/bench_tenancy.py                     # docker, 2000 rounds
    .venv/bin/python bench/bench_tenancy.py --backend nsjail --rounds 500 --json /tmp/t.json

Both clients are the daemon's own protocol client (boxruntime.protocol.Peer) over aiohttp, so the
difference is the daemon's work, not two client libraries'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_daemons import preflight, start_ours
from bench_harness import DEFAULT_IMAGE, BenchError, log
from bench_report import pct

from boxruntime.protocol import Peer, WebSocketConnection

INSTANCE = "bench-instance"
CONTEXT = {"instance_uuid": INSTANCE, "workspace_uuid": "bench-workspace", "placement_generation": 1}


@contextlib.asynccontextmanager
async def client(url: str, headers: dict[str, str]) -> AsyncIterator[Peer]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers, max_msg_size=0) as ws:
        peer = Peer(WebSocketConnection(ws), name="bench")
        reader = asyncio.create_task(peer.run())
        try:
            yield peer
        finally:
            await peer.aclose()
            await reader


async def exec_ms(peer: Peer, context: dict[str, Any] | None, session_id: str) -> float:
    start = time.perf_counter()
    result = await peer.call("box_exec", {"session_id": session_id, "cmd": "echo hi"}, timeout=60, context=context)
    elapsed = (time.perf_counter() - start) * 1000
    if result.get("stdout") != "hi" or result.get("session_id") != session_id:
        raise BenchError(f"unexpected exec result: {result}")
    return elapsed


async def measure(url: str, rounds: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"without context": [], "with a 0.7 context": []}
    async with client(url, {}) as legacy, client(url, {"X-LangBot-Instance-Id": INSTANCE}) as tenant:
        sides = [("without context", legacy, None, "ab-legacy"), ("with a 0.7 context", tenant, CONTEXT, "ab-07")]
        for _ in range(warmup):
            for _, peer, context, session in sides:
                await exec_ms(peer, context, session)
        for i in range(rounds):
            order = sides if i % 2 == 0 else sides[::-1]  # alternate who goes first
            for name, peer, context, session in order:
                samples[name].append(await exec_ms(peer, context, session))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="docker", choices=("docker", "nsjail"))
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the samples' summary here")
    args = parser.parse_args()
    engine = preflight(args.image, args.backend)
    with tempfile.TemporaryDirectory(prefix="bench-tenancy-") as tmp:
        work = Path(tmp)
        daemon = start_ours(work, work, args.backend, args.image, pool_size=0)
        try:
            daemon.wait_listening()
            log(f"{args.rounds} interleaved rounds on {args.backend} ({engine})")
            samples = asyncio.run(measure(daemon.url, args.rounds, args.warmup))
        finally:
            log(f"daemon {daemon.stop()}")
    rows = {
        name: {"p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99)}
        for name, values in samples.items()
    }
    added = rows["with a 0.7 context"]["p50"] - rows["without context"]["p50"]
    print(f"warm exec 'echo hi' on {args.backend}, {args.rounds} interleaved rounds (ms)")
    print(f"{'':22} {'p50':>7} {'p90':>7} {'p99':>7}")
    for name, row in rows.items():
        print(f"{name:22} {row['p50']:7.3f} {row['p90']:7.3f} {row['p99']:7.3f}")
    print(f"added by the 0.7 context at p50: {added * 1000:+.0f} us (target: at most +100 us)")
    if args.json:
        args.json.write_text(
            json.dumps({"backend": args.backend, "rounds": args.rounds, "rows": rows, "added_p50_ms": added})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
