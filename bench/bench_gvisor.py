"""gVisor (runsc) against runc in one run: warm exec and cold create, each interleaved.

Two daemons of ours on the same engine and image, one on the docker backend (runc), one on the
gvisor backend (runsc), both without a warm pool so every create is a pool miss (a new
container). Each round asks both, alternating who goes first.

- warm exec: ``echo hi`` in a session that exists (p50, p90, p99), back to back, and again
  after a pause (``--pause-ms``, as between an agent's turns): the agent starts the shell for
  the next command while it is idle, which under gVisor's ptrace platform takes tens of ms;
- cold create: ``box_create_session`` with a new id, then its first ``echo hi`` (what a new
  chat waits for); the session is deleted after each round, outside the timing.

Targets (issue 15): gVisor's warm exec at most 3x runc's, its create at most 2x runc's.

    .venv/bin/python bench/bench_gvisor.py                    # 1000 exec rounds, 20 creates
    .venv/bin/python bench/bench_gvisor.py --rounds 300 --creates 10 --json /tmp/g.json

The client is the daemon's own protocol client (bench_peer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_daemons import preflight, start_ours
from bench_harness import DEFAULT_IMAGE, log
from bench_peer import client, exec_ms
from bench_report import pct

from boxruntime.protocol import Peer

BACKENDS = ("docker", "gvisor")
TARGETS = {"warm exec": 3.0, "warm exec after a pause": 3.0, "cold create": 2.0}


async def create_ms(peer: Peer, session_id: str) -> float:
    start = time.perf_counter()
    await peer.call("box_create_session", {"session_id": session_id}, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000 + await exec_ms(peer, session_id)
    await peer.call("box_delete_session", {"session_id": session_id}, timeout=120)
    return elapsed


async def measure(
    urls: dict[str, str], rounds: int, paused: int, pause_ms: float, creates: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {what: {b: [] for b in BACKENDS} for what in TARGETS}
    async with client(urls["docker"]) as runc, client(urls["gvisor"]) as runsc:
        peers = {"docker": runc, "gvisor": runsc}
        for i in range(creates):
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                samples["cold create"][backend].append(await create_ms(peers[backend], f"cold-{i}"))
        for backend in BACKENDS:
            for _ in range(warmup):
                await exec_ms(peers[backend], "warm")
        for i in range(rounds):
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                samples["warm exec"][backend].append(await exec_ms(peers[backend], "warm"))
        for i in range(paused):
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                await asyncio.sleep(pause_ms / 1000)
                samples["warm exec after a pause"][backend].append(await exec_ms(peers[backend], "warm"))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--paused", type=int, default=200, help="exec rounds after a pause")
    parser.add_argument("--pause-ms", type=float, default=200)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    engine = preflight(args.image, "docker")
    with tempfile.TemporaryDirectory(prefix="bench-gvisor-") as tmp:
        daemons = {}
        try:
            for backend in BACKENDS:
                work = Path(tmp) / backend
                work.mkdir()
                daemons[backend] = start_ours(work, work, backend, args.image, pool_size=0)
            for daemon in daemons.values():
                daemon.wait_listening()
            log(f"{args.creates} creates and {args.rounds} exec rounds, interleaved, on Docker {engine}")
            urls = {b: d.url for b, d in daemons.items()}
            samples = asyncio.run(measure(urls, args.rounds, args.paused, args.pause_ms, args.creates, args.warmup))
        finally:
            for daemon in daemons.values():
                log(f"daemon {daemon.stop()}")
    summary: dict[str, Any] = {}
    for what, by_backend in samples.items():
        rows = {b: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99)} for b, v in by_backend.items()}
        ratio = rows["gvisor"]["p50"] / rows["docker"]["p50"]
        summary[what] = {"rows": rows, "ratio_p50": ratio, "target": TARGETS[what], "n": len(by_backend["docker"])}
        print(f"\n{what} (ms, n={len(by_backend['docker'])} each)")
        print(f"{'':16} {'p50':>8} {'p90':>8} {'p99':>8}")
        for backend, row in rows.items():
            label = f"{backend} ({'runsc' if backend == 'gvisor' else 'runc'})"
            print(f"{label:16} {row['p50']:8.2f} {row['p90']:8.2f} {row['p99']:8.2f}")
        verdict = "met" if ratio <= TARGETS[what] else "MISSED"
        print(f"gVisor / runc at p50: {ratio:.2f}x (target: at most {TARGETS[what]:g}x, {verdict})")
    if args.json:
        args.json.write_text(json.dumps({"engine": engine, "rounds": args.rounds, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
