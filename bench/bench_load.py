"""Load: many clients executing at once in a few sessions of one daemon (issue 16, part 5).

One ``boxruntime serve`` (this tree, no warm pool); ``--sessions`` sessions made and warmed
first (untimed); then ``--clients`` WebSocket clients (bench_peer, one connection each), client
``i`` on session ``i % sessions``, each running ``--execs`` ``box_exec echo hi`` back to back,
all at once. Reported: errors (any failed or wrong exec; the target is none), execs per second
over the whole run (first request to last reply), latency p50/p90/p99/max, and the daemon's RSS
(/proc: before, after, peak VmHWM). The clients run in this process, on the same machine as the
daemon and its sandboxes: their CPU counts against the figures (reported as the bench's own CPU
time), and so does any other work on the machine (the load average before is printed).

    .venv/bin/python bench/bench_load.py                      # docker: 64 clients x 100 execs, 16 sessions
    .venv/bin/python bench/bench_load.py --backend nsjail --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_daemons import OURS_DATA, docker_cli, preflight, start_ours
from bench_harness import DEFAULT_IMAGE, BenchError, log
from bench_peer import client, exec_ms
from bench_report import pct

TARGET_RATE = 1200.0  # execs/s
TARGET_P99_MS = 100.0


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core; /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def sandbox_cpu_s(data_dir: Path) -> float | None:
    """CPU seconds of this daemon's Docker sandboxes so far (their cpuacct cgroups, v1), or None
    where they cannot be read (nsjail, another cgroup layout)."""
    listing = docker_cli("ps", "-q", "--no-trunc", "--filter", f"label=boxruntime.data_dir={data_dir.resolve()}")
    ids = listing.stdout.split()
    usage = [Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage") for cid in ids]
    if listing.returncode != 0 or not ids or not all(p.exists() for p in usage):
        return None
    return sum(int(p.read_text()) for p in usage) / 1e9


def rss_kib(pid: int) -> dict[str, int]:
    """The process's VmRSS and VmHWM (peak), in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def one_client(url: str, session_id: str, execs: int, start: asyncio.Event) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    async with client(url) as peer:
        await start.wait()
        for _ in range(execs):
            try:
                latencies.append(await exec_ms(peer, session_id))
            except Exception as exc:  # counted and reported: the target is zero
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
    return latencies, errors


async def measure(url: str, clients: int, execs: int, sessions: int, data_dir: Path) -> dict[str, Any]:
    names = [f"load-{i}" for i in range(sessions)]
    async with client(url) as peer:
        for name in names:  # made and warmed before the clock starts
            await peer.call("box_create_session", {"session_id": name}, timeout=180)
            for _ in range(3):
                await exec_ms(peer, name)
    start = asyncio.Event()
    tasks = [asyncio.create_task(one_client(url, names[i % sessions], execs, start)) for i in range(clients)]
    await asyncio.sleep(1.0)  # every client connected (a failed connect surfaces in gather)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sandboxes0, machine0 = sandbox_cpu_s(data_dir), machine_busy_s()
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sandboxes1, machine1 = sandbox_cpu_s(data_dir), machine_busy_s()
    latencies = [ms for lat, _ in results for ms in lat]
    errors = [e for _, errs in results for e in errs]
    async with client(url) as peer:
        for name in names:
            await peer.call("box_delete_session", {"session_id": name}, timeout=180)
    return {
        "wall_s": wall,
        "latencies": latencies,
        "errors": errors,
        "machine_busy_s": machine1 - machine0,
        "sandbox_cpu_s": None if sandboxes0 is None or sandboxes1 is None else sandboxes1 - sandboxes0,
        "bench_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="docker", choices=("docker", "nsjail", "gvisor"))
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--execs", type=int, default=100, help="per client")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    engine = preflight(args.image, "docker" if args.backend == "gvisor" else args.backend)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        daemon = start_ours(Path(tmp), Path(tmp), args.backend, args.image, pool_size=0)
        try:
            daemon.wait_listening()
            pid = daemon.proc.pid
            idle = rss_kib(pid)
            log(
                f"{args.clients} clients x {args.execs} execs over {args.sessions} sessions on {args.backend} "
                f"({engine}); load average before {load_before[0]:.2f}"
            )
            ticks = os.sysconf("SC_CLK_TCK")
            stat0 = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            run = asyncio.run(measure(daemon.url, args.clients, args.execs, args.sessions, Path(tmp) / OURS_DATA))
            stat1 = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            after = rss_kib(pid)
        finally:
            log(f"daemon {daemon.stop()}")
    # utime and stime are fields 14 and 15 of /proc/pid/stat (indices 11, 12 after the name).
    daemon_cpu = (int(stat1[11]) + int(stat1[12]) - int(stat0[11]) - int(stat0[12])) / ticks
    lat = run["latencies"]
    expected = args.clients * args.execs
    if not lat:
        raise BenchError(f"no exec succeeded: {run['errors'][:3]}")
    summary = {
        "backend": args.backend,
        "engine": engine,
        "clients": args.clients,
        "execs_per_client": args.execs,
        "sessions": args.sessions,
        "load_average_before": load_before[0],
        "execs": len(lat),
        "errors": expected - len(lat),  # each exec either timed or one of run["errors"]
        "error_samples": run["errors"][:5],
        "wall_s": run["wall_s"],
        "execs_per_s": len(lat) / run["wall_s"],
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat),
        "daemon_rss_mib": {
            "idle": idle["VmRSS"] / 1024,
            "after": after["VmRSS"] / 1024,
            "peak": after["VmHWM"] / 1024,
        },
        "daemon_cpu_s": daemon_cpu,
        "bench_cpu_s": run["bench_cpu_s"],
        "sandbox_cpu_s": run["sandbox_cpu_s"],
        "machine_busy_s": run["machine_busy_s"],
        "cores": os.cpu_count(),
    }
    rate_ok = summary["execs_per_s"] >= TARGET_RATE
    p99_ok = summary["p99_ms"] <= TARGET_P99_MS
    print(f"\n{len(lat)} execs in {run['wall_s']:.2f} s, {summary['errors']} errors")
    print(f"execs/s  {summary['execs_per_s']:8.0f}   (target >= {TARGET_RATE:.0f}: {'met' if rate_ok else 'MISSED'})")
    print(
        f"latency  p50 {summary['p50_ms']:.1f} ms  p90 {summary['p90_ms']:.1f} ms  p99 {summary['p99_ms']:.1f} ms"
        f"  max {summary['max_ms']:.1f} ms   (p99 target <= {TARGET_P99_MS:.0f}: {'met' if p99_ok else 'MISSED'})"
    )
    rss = summary["daemon_rss_mib"]
    print(f"daemon RSS  idle {rss['idle']:.1f} MiB  after {rss['after']:.1f} MiB  peak {rss['peak']:.1f} MiB")
    sandboxes = "n/a" if run["sandbox_cpu_s"] is None else f"{run['sandbox_cpu_s']:.1f} s"
    print(
        f"CPU during the run: daemon {daemon_cpu:.1f} s, bench clients {run['bench_cpu_s']:.1f} s, sandboxes "
        f"{sandboxes}; the machine busy {run['machine_busy_s']:.1f} s of {run['wall_s'] * (os.cpu_count() or 1):.1f} s"
    )
    for sample in run["errors"][:5]:
        print(f"error: {sample}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
