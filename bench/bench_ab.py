"""The daemon before and after a change, in one run: warm exec and pool-hit create, interleaved.

Issue 15's no-regression target: warm exec p50 and pool-hit create within 5 % of the code
before the backend redesign. Two daemons of ours on the same backend, engine and image: one
from this tree ("after"), one from a git worktree of ``--before`` (default 7f5ab4b, the last
commit before the redesign), made in a temporary directory and removed at the end. Both get a
warm pool of ``--pool-size``; the client is the same code for both (bench_peer).

- warm exec: ``box_exec echo hi`` in a session that exists, in blocks of ``--block`` per daemon,
  the daemons taking turns to lead, after a short pause per block (p50, p90);
- pool-hit create: ``box_create_session`` with LangBot's default spec, then its first ``echo
  hi``; before each one the bench waits until that daemon's pool is full again, and the pool's
  hit counter must move by exactly one (else the round is an error). Deleted after, untimed.

    .venv/bin/python bench/bench_ab.py                         # docker, 400 execs, 20 creates each
    .venv/bin/python bench/bench_ab.py --backend nsjail --before 7f5ab4b --json /tmp/ab.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_daemons import preflight, start_ours
from bench_harness import DEFAULT_IMAGE, ROOT, BenchError, log
from bench_peer import client, exec_ms, pool_full, pool_of
from bench_report import pct

from boxruntime.protocol import Peer

SIDES = ("before", "after")
TARGET_PCT = 5.0


def worktree_of(ref: str, where: Path) -> Path:
    """A detached checkout of ``ref`` (removed by ``drop_worktree``)."""
    path = where / "before-tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True, capture_output=True
    )
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False, capture_output=True
    )


async def create_hit_ms(peer: Peer, session_id: str) -> float:
    """Create + first exec of a session the pool serves; the hit checked on the counters."""
    before = await pool_full(peer)
    start = time.perf_counter()
    await peer.call("box_create_session", {"session_id": session_id}, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000 + await exec_ms(peer, session_id)
    after = await pool_of(peer)
    await peer.call("box_delete_session", {"session_id": session_id}, timeout=120)
    if after["hits"] != before["hits"] + 1:
        raise BenchError(f"create of {session_id} was not a pool hit: {before} -> {after}")
    return elapsed


async def measure(
    urls: dict[str, str], execs: int, block: int, creates: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        "warm exec": {s: [] for s in SIDES},
        "pool-hit create": {s: [] for s in SIDES},
    }
    async with client(urls["before"]) as old, client(urls["after"]) as new:
        peers = {"before": old, "after": new}
        for i in range(creates):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                samples["pool-hit create"][side].append(await create_hit_ms(peers[side], f"ab-create-{i}"))
        for side in SIDES:
            for _ in range(warmup):
                await exec_ms(peers[side], "ab-warm")
        for i in range(execs // block):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                await asyncio.sleep(0.2)
                for _ in range(block):
                    samples["warm exec"][side].append(await exec_ms(peers[side], "ab-warm"))
    return samples


def report(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for what, by_side in samples.items():
        rows = {s: {"p50": pct(v, 50), "p90": pct(v, 90), "n": len(v)} for s, v in by_side.items()}
        change = (rows["after"]["p50"] / rows["before"]["p50"] - 1) * 100
        summary[what] = {"rows": rows, "change_p50_pct": change}
        print(f"\n{what} (ms, n={rows['after']['n']} each)")
        print(f"{'':8} {'p50':>8} {'p90':>8}")
        for side, row in rows.items():
            print(f"{side:8} {row['p50']:8.2f} {row['p90']:8.2f}")
        verdict = "met" if change <= TARGET_PCT else "MISSED"
        print(f"after vs before at p50: {change:+.1f} % (target: at most +{TARGET_PCT:g} %, {verdict})")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="7f5ab4b", help="the git ref to compare against")
    parser.add_argument("--backend", default="docker", choices=("docker", "nsjail"))
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--execs", type=int, default=400)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    engine = preflight(args.image, args.backend)
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        before_tree = worktree_of(args.before, Path(tmp))
        daemons = {}
        try:
            for side, source in (("before", before_tree), ("after", ROOT)):
                work = Path(tmp) / side
                work.mkdir()
                daemons[side] = start_ours(work, work, args.backend, args.image, args.pool_size, source=source)
            for daemon in daemons.values():
                daemon.wait_listening()
            log(f"{args.before} against this tree on {args.backend}: {args.creates} creates, {args.execs} execs each")
            urls = {side: d.url for side, d in daemons.items()}
            samples = asyncio.run(measure(urls, args.execs, args.block, args.creates, args.warmup))
        finally:
            for daemon in daemons.values():
                log(f"daemon {daemon.stop()}")
            drop_worktree(before_tree)
    summary = report(samples)
    if args.json:
        args.json.write_text(
            json.dumps({"before": args.before, "backend": args.backend, "engine": engine, **summary}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
