"""Exec latency and more: boxruntime vs LangBot's own Box runtime (``lbp box``), in one interleaved run.

Both daemons run on the same backend (Docker with the same local image, or nsjail), and both are
driven through LangBot's own client stack (``WebSocketClientController`` + ``Handler`` +
``ActionRPCBoxClient`` from ``langbot-plugin``), so the measured path is identical up to the
daemon. The machine may be shared and noisy, so every measurement alternates between the two
daemons (the order flips every round) and the report is a ratio from this one run.

Sections: warm exec (and ours' in parts), managed-process relay round trip, cold create + first
exec, create + first exec with a warm-pool hit and a miss, N parallel create + first exec,
daemon RSS.

Run from the repository root::

    .venv/bin/python bench/bench_exec.py [--backend docker|nsjail] [--json out.json]

See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from bench_breakdown import bench_breakdown
from bench_daemons import OURS_DATA, DaemonProc, preflight, remove_containers, start_ours, start_theirs
from bench_harness import (
    DEFAULT_IMAGE,
    OURS,
    ROOT,
    SIDES,
    THEIRS,
    BenchError,
    PoolWatch,
    Shape,
    Side,
    connect,
    disconnect,
    log,
    pool_status,
)
from bench_report import render_table
from bench_rows import build_rows
from bench_sections import (
    bench_cold,
    bench_parallel,
    bench_pool,
    bench_relay,
    bench_warm,
    measure_idle_rss,
)
from bench_stdio import OURS_STDIO_DATA, bench_warm_stdio


async def run_bench(args: argparse.Namespace, daemons: dict[str, DaemonProc], shape: Shape) -> dict[str, Any]:
    sides = {name: Side(name, daemons[name].name, daemons[name]) for name in SIDES}
    phases: dict[str, float] = {}
    results: dict[str, Any] = {}

    async def phase(name: str, coro: Any) -> Any:
        t0 = time.monotonic()
        out = await coro
        phases[name] = round(time.monotonic() - t0, 1)
        results[name] = out
        return out

    try:
        for side in sides.values():
            try:
                await connect(side)
            except BenchError:
                raise
            except Exception as exc:
                raise BenchError(f"{side.name}: box_health failed: {type(exc).__name__}: {exc}") from exc
        watch = PoolWatch(sides[OURS], args.pool_size)
        if args.pool_size > 0:
            log(f"waiting for our warm pool to fill ({args.pool_size} sandboxes)")
        if args.rss:
            await phase("rss_idle", measure_idle_rss(sides, watch))
        else:
            await watch.settle()
        await phase("warm", bench_warm(sides, shape, args.warm, args.warmup))
        work = shape.mount_root.parent
        if args.breakdown:
            await phase("breakdown", bench_breakdown(sides[OURS], work / OURS_DATA, shape, args.breakdown))
        if args.stdio_warm:
            stdio = await phase("warm_stdio", bench_warm_stdio(work, shape, args.backend, args.stdio_warm, args.warmup))
            for name in SIDES:
                sides[name].errors += stdio["errors"][name]
        if args.relay:
            await phase("relay", bench_relay(sides, shape, args.relay))
        pool_before = await pool_status(sides[OURS])
        await phase("cold", bench_cold(sides, shape, args.cold))
        pool_after = await pool_status(sides[OURS])
        if pool_before is not None and pool_after is not None:
            results["cold_pool"] = {k: pool_after[k] - pool_before[k] for k in ("hits", "misses")}
        if args.pool:
            await phase("pool", bench_pool(sides, shape, args.pool, watch))
        if args.parallel:
            await phase("parallel", bench_parallel(sides, shape, args.parallel, args.parallel_rounds, watch, args.rss))
        with contextlib.suppress(Exception):
            await sides[THEIRS].client.shutdown()  # box_shutdown: drops its sessions before we stop it
    finally:
        for side in sides.values():
            await disconnect(side)

    rows, notes = build_rows(args, shape, results)
    return {
        "table": render_table(rows),
        "notes": notes.lines,
        "metrics": {
            row.key: {
                "unit": row.unit,
                f"ours_{row.unit.lower()}": row.ours,
                f"theirs_{row.unit.lower()}": row.theirs,
                "ratio_theirs_over_ours": row.ratio,
            }
            for row in rows
        },
        "results": results,
        "errors": {name: sides[name].errors for name in SIDES},
        "phase_seconds": phases,
        "pool_wait_seconds": watch.waited_s,
    }


def source_state() -> dict[str, Any]:
    """The commit of the tree the daemon ran from and its uncommitted files (the tree may be shared)."""

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"head": git("rev-parse", "HEAD"), "uncommitted": git("status", "--short", "boxruntime").splitlines()}


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.replace(" ", "").split(",") if x and x != "0"]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of session counts, got {text!r}") from None
    if any(n < 1 or n > 60 for n in counts):
        raise argparse.ArgumentTypeError("each parallel session count must be between 1 and 60 (max_sessions 64)")
    return sorted(set(counts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--warm", type=int, default=200, help="timed warm execs per daemon (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up execs per daemon (default 5)")
    p.add_argument("--cold", type=int, default=10, help="cold-start rounds per daemon (default 10)")
    p.add_argument("--pool", type=int, default=5, help="pool-hit rounds and pool-miss rounds (default 5; 0 skips)")
    p.add_argument("--pool-size", type=int, default=2, help="our BOXRUNTIME_POOL_SIZE (default 2; 0 disables)")
    p.add_argument(
        "--parallel",
        type=parse_counts,
        default=[8, 32],
        help="parallel session counts, comma-separated (default 8,32; '' or 0 skips)",
    )
    p.add_argument("--parallel-rounds", type=int, default=1, help="rounds per parallel count (default 1)")
    p.add_argument(
        "--stdio-warm",
        type=int,
        default=200,
        help="timed warm execs per daemon over LangBot's stdio transport (default 200; 0 skips)",
    )
    p.add_argument(
        "--breakdown",
        type=int,
        default=200,
        help="back-to-back runs of each part of ours' warm exec: the exec, a no-op action, the agent alone "
        "(default 200; 0 skips)",
    )
    p.add_argument("--relay", type=int, default=300, help="relay round trips per daemon (default 300; 0 skips)")
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the daemon memory figures")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"local image for both daemons (default {DEFAULT_IMAGE})")
    p.add_argument(
        "--spec",
        choices=("mount", "rootfs"),
        default="mount",
        help="session shape: 'mount' = host_path workspace + read-only rootfs (LangBot's usual shape, default); "
        "'rootfs' = no host mount, read_only_rootfs=false",
    )
    p.add_argument(
        "--backend",
        choices=("docker", "nsjail"),
        default="docker",
        help="sandbox backend for both daemons (default docker; nsjail needs no engine or image)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures (and raw samples) to this JSON file")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with both daemons' logs")
    args = p.parse_args(argv)
    if args.warm < 1 or args.cold < 1 or args.warmup < 0:
        p.error("--warm and --cold must be >= 1, --warmup >= 0")
    counts_ok = min(args.pool, args.relay, args.stdio_warm, args.breakdown) >= 0 and args.parallel_rounds >= 1
    if not counts_ok or not 0 <= args.pool_size <= 64:
        p.error("--pool, --relay, --stdio-warm and --breakdown must be >= 0, --parallel-rounds >= 1, --pool-size 0..64")
    if args.pool and args.pool_size == 0:
        p.error("--pool needs a pool: use --pool-size >= 1 or --pool 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        engine = preflight(args.image, args.backend)
    except BenchError as exc:
        print(f"bench_exec: {exc}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="boxruntime-bench-")).resolve()
    mount_root = work / "mounts"
    mount_root.mkdir()
    run_id = uuid.uuid4().hex[:8]
    shape = Shape(args.image, args.spec, mount_root, run_id, "echo hi")
    daemons: dict[str, DaemonProc] = {}
    old_cwd = Path.cwd()
    status = 0
    try:
        # LangBot's Handler creates data/temp/lbp relative to the cwd: keep it inside the temp dir.
        client_cwd = work / "client-cwd"
        client_cwd.mkdir()
        os.chdir(client_cwd)
        log(f"{args.backend}: {engine}, image {args.image}, spec '{args.spec}', work dir {work}")
        daemons[OURS] = start_ours(work, mount_root, args.backend, args.image, args.pool_size)
        daemons[THEIRS] = start_theirs(work, args.backend)
        for d in daemons.values():
            d.wait_listening()
        log(f"{daemons[OURS].name} on :{daemons[OURS].port}, {daemons[THEIRS].name} on :{daemons[THEIRS].port}")
        started = time.monotonic()
        report = asyncio.run(run_bench(args, daemons, shape))
        print(report["table"])
        for note in report["notes"]:
            print(note)
        log(f"measured in {time.monotonic() - started:.0f} s")
        for name, errors in report["errors"].items():
            if errors:
                status = 1
                print(f"\n{daemons[name].name}: {len(errors)} failed or wrong calls:", file=sys.stderr)
                for err in errors[:10]:
                    print(f"  - {err}", file=sys.stderr)
        if args.json:
            out = {
                "config": {
                    "backend": args.backend,
                    "image": args.image,
                    "spec": args.spec,
                    "cmd": shape.cmd,
                    "warm_rounds": args.warm,
                    "stdio_warm_rounds": args.stdio_warm,
                    "breakdown_rounds": args.breakdown,
                    "warmup": args.warmup,
                    "cold_rounds": args.cold,
                    "pool_rounds": args.pool,
                    "pool_size": args.pool_size,
                    "parallel": args.parallel,
                    "parallel_rounds": args.parallel_rounds,
                    "relay_rounds": args.relay,
                    "rss": args.rss,
                    "engine": engine,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "host": platform.node(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "boxruntime_source": source_state(),
                },
                **{k: v for k, v in report.items() if k != "table"},
            }
            Path(old_cwd, args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
            log(f"wrote {Path(old_cwd, args.json)}")
    except BenchError as exc:
        print(f"bench_exec: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("bench_exec: interrupted", file=sys.stderr)
        status = 130
    finally:
        os.chdir(old_cwd)
        status = cleanup(daemons, work, run_id, args.keep_logs or status in (1, 2)) or status
    return status


def cleanup(daemons: dict[str, DaemonProc], work: Path, run_id: str, keep: bool) -> int:
    """Stop both daemons and remove any container they left; never touch anyone else's."""
    status = 0
    for d in daemons.values():
        log(f"stopping {d.name}: {d.stop()}")
    ours_dirs = {str(work / OURS_DATA), str(work / OURS_STDIO_DATA)}
    ours = remove_containers("boxruntime.managed=true", lambda v: v in ours_dirs, "boxruntime.data_dir")
    theirs = remove_containers("langbot.box=true", lambda v: v.startswith(f"bench-{run_id}-"), "langbot.session_id")
    if ours:
        log(f"note: {len(ours)} container(s) of ours were left after shutdown and removed")
        status = 1
    if theirs:
        log(f"removed {len(theirs)} container(s) lbp box left behind")
    if keep:
        log(f"daemon logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
