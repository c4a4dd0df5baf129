"""Idle suspend: what 100 idle sessions use awake and frozen, and how long a thaw takes.

Targets (issue 16): a frozen idle session's CPU use 0; a thaw ≤ 50 ms.

    .venv/bin/python bench/bench_suspend.py                         # Docker, 100 sessions
    .venv/bin/python bench/bench_suspend.py --backend nsjail --json out.json

One daemon with ``suspend_idle_sec`` (``--idle``, default 30 s) makes ``--sessions`` sessions,
each with a managed process that wakes up 100 times a second and does nothing (an idle server's
timers; ``--no-poller``: the agent alone, which wakes once a second). Each is used once (an
exec) and then measured for ``--window`` seconds while awake: the CPU
time its sandbox's processes used (Docker: the container's cpuacct group; nsjail: the jail's
processes, listed by its memory group, from /proc) and its memory (the memory group's usage
and RSS). Then the bench waits until the daemon has frozen every session, and measures the same
window again. Last, each session is thawed by an exec: ``thaw`` is what the daemon's log says
the backend's thaw took, ``exec after freeze`` the client's round trip of that exec, and ``exec
awake`` the round trip of the next one in the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from integration_tests.daemon import Daemon, connect, jails_of, start_daemon  # noqa: E402

TARGET_THAW_MS = 50.0
POLLER = "import time\nwhile True:\n    time.sleep(0.01)\n"
CGROUP = Path("/sys/fs/cgroup")
TICK = os.sysconf("SC_CLK_TCK")
PARALLEL = 8


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Sandbox:
    """One session's sandbox as the host's cgroups see it."""

    def __init__(self, memory: Path, cpuacct: Path | None) -> None:
        self.memory = memory
        self.cpuacct = cpuacct

    def cpu_sec(self) -> float:
        if self.cpuacct is not None:
            return int((self.cpuacct / "cpuacct.usage").read_text()) / 1e9
        total = 0
        for pid in (self.memory / "cgroup.procs").read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        return total / TICK

    def memory_bytes(self) -> tuple[int, int]:
        usage = int((self.memory / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (self.memory / "memory.stat").read_text().splitlines())
        return usage, int(stat.get("total_rss", 0))


def sandboxes(backend: str, data_dir: Path, ids: list[str]) -> list[Sandbox]:
    if backend in ("docker", "gvisor"):  # gVisor: the container's cgroups hold its kernel too
        import docker

        client = docker.from_env()
        try:
            found = []
            for name in ids:
                cid = client.containers.get(name).id
                found.append(Sandbox(CGROUP / "memory" / "docker" / cid, CGROUP / "cpuacct" / "docker" / cid))
            return found
        finally:
            client.close()
    found = []
    for pid in jails_of(data_dir):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        found.append(Sandbox(CGROUP / "memory" / "boxruntime" / f"NSJAIL.{children[0]}", None))
    return found


async def measure(boxes: list[Sandbox], window: float) -> dict[str, float]:
    cpu_before = sum(b.cpu_sec() for b in boxes)
    started = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - started
    cpu = sum(b.cpu_sec() for b in boxes) - cpu_before
    memory = [b.memory_bytes() for b in boxes]
    return {
        "cpu_sec_in_window": round(cpu, 4),
        "cpu_percent_of_one_core": round(100 * cpu / elapsed, 3),
        "memory_usage_mib": round(sum(m[0] for m in memory) / 2**20, 1),
        "rss_mib": round(sum(m[1] for m in memory) / 2**20, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-suspend-")) / "data"
    env = {"BOXRUNTIME_MAX_SESSIONS": str(args.sessions + 8), "BOXRUNTIME_SUSPEND_IDLE_SEC": str(args.idle)}
    daemon: Daemon = start_daemon(data_dir, "--backend", args.backend, env=env)
    ids = [f"idle-{i:03d}" for i in range(args.sessions)]
    limiter = asyncio.Semaphore(PARALLEL)
    try:
        async with connect(daemon) as peer:

            async def create(sid: str) -> str:
                async with limiter:
                    info = await peer.call("box_create_session", {"session_id": sid}, timeout=300)
                    if args.poller:
                        spec = {"process_id": "poller", "command": "python3", "args": ["-c", POLLER]}
                        await peer.call("box_start_managed_process", {"session_id": sid, "spec": spec}, timeout=60)
                    return str(info["backend_session_id"])

            started = time.monotonic()
            sandbox_ids = await asyncio.gather(*(create(sid) for sid in ids))
            log(f"{args.sessions} sessions made in {time.monotonic() - started:.1f} s")
            boxes = sandboxes(args.backend, data_dir, list(sandbox_ids))

            async def use(sid: str) -> None:
                async with limiter:
                    await peer.call("box_exec", {"session_id": sid, "cmd": "true"}, timeout=60)

            await asyncio.gather(*(use(sid) for sid in ids))  # every session used just now: awake
            awake = await measure(boxes, args.window)
            listed = await peer.call("box_get_sessions", {})
            if any(s["suspended"] for s in listed["sessions"]):
                raise SystemExit("sessions froze during the awake window: raise --idle")
            log(f"awake: {awake}")

            deadline = time.monotonic() + args.idle * 3 + 60
            while True:
                listed = await peer.call("box_get_sessions", {})
                frozen_count = sum(1 for s in listed["sessions"] if s["suspended"])
                if frozen_count == args.sessions:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {frozen_count} of {args.sessions} sessions froze")
                await asyncio.sleep(0.5)
            frozen = await measure(boxes, args.window)
            log(f"frozen: {frozen}")

            after_freeze, awake_exec = [], []
            log_start = len(daemon.log())
            for sid in ids:  # one at a time: each thaw measured alone
                for into in (after_freeze, awake_exec):
                    t0 = time.perf_counter()
                    await peer.call("box_exec", {"session_id": sid, "cmd": "true"}, timeout=60)
                    into.append((time.perf_counter() - t0) * 1000)
            # Only the thaws of this loop (the removal at the end thaws every session at once).
            thaw_log = daemon.log()[log_start:]
    finally:
        daemon.stop()
    thaws = [float(ms) for ms in re.findall(r"thawed in ([0-9.]+) ms", thaw_log)]

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max": round(ordered[-1], 2),
        }

    return {
        "backend": args.backend,
        "sessions": args.sessions,
        "poller": args.poller,
        "window_sec": args.window,
        "awake": awake,
        "frozen": frozen,
        "thaw_ms": summary(thaws),
        "exec_after_freeze_ms": summary(after_freeze),
        "exec_awake_ms": summary(awake_exec),
        "target_thaw_ms": TARGET_THAW_MS,
        "met": frozen["cpu_sec_in_window"] == 0 and summary(thaws)["p99"] <= TARGET_THAW_MS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("docker", "gvisor", "nsjail"), default="docker")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--idle", type=int, default=30, help="suspend_idle_sec of the daemon")
    parser.add_argument("--window", type=float, default=10.0, help="seconds each measurement lasts")
    parser.add_argument("--no-poller", dest="poller", action="store_false", help="no managed process")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
