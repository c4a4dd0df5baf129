"""What this machine charges for the steps every exec is made of, with no daemon in the way.

A warm exec wakes a process six times (client, daemon, agent, shell, agent, daemon, client),
starts a process (the next spare shell) and ends one (the command's shell). This prints what
each of those costs here, so an exec latency can be read against the machine it ran on:

- a page fault (first touch of a fresh anonymous page);
- a pipe round trip between two processes, both pinned to one CPU, and pinned to two CPUs;
- posix_spawn of /bin/true and waiting for it (start, exit, reap);
- posix_spawn of ``/bin/sh -c 'exit 0'`` and waiting for it.

Run:  .venv/bin/python bench/bench_machine.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time

PAGE = mmap.PAGESIZE


def page_fault_us(pages: int) -> float:
    with mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as region:
        start = time.perf_counter()
        for offset in range(0, pages * PAGE, PAGE):
            region[offset] = 1
        return (time.perf_counter() - start) / pages * 1e6


def pipe_round_trip_us(rounds: int, parent_cpu: int, child_cpu: int) -> float:
    """Median of ``rounds`` one-byte round trips to a child process, each side on its CPU."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child echoes every byte back, then exits at EOF
        try:
            os.close(to_child_w)  # else its own copy keeps the EOF from ever coming
            os.close(to_parent_r)
            os.sched_setaffinity(0, {child_cpu})
            while os.read(to_child_r, 1):
                os.write(to_parent_w, b"x")
        finally:
            os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {parent_cpu})
    samples = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
            samples.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, old)
        os.close(to_child_w)
        os.close(to_parent_r)
        os.waitpid(pid, 0)
    return statistics.median(samples) * 1e6


def spawn_and_wait_us(argv: list[str], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, {})
        os.waitpid(pid, 0)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=2000, help="pipe round trips per placement (default 2000)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    cpus = sorted(os.sched_getaffinity(0))
    spawns = max(20, args.rounds // 20)
    print(f"{len(cpus)} CPUs, Python {sys.version.split()[0]}, kernel {os.uname().release}")
    print(f"page fault, first touch:                   {page_fault_us(20000):8.2f} us")
    one = pipe_round_trip_us(args.rounds, cpus[0], cpus[0])
    print(f"pipe round trip, both on CPU {cpus[0]}:            {one:8.1f} us")
    if len(cpus) > 1:
        across = pipe_round_trip_us(args.rounds, cpus[0], cpus[1])
        print(f"pipe round trip, CPU {cpus[0]} <-> CPU {cpus[1]}:           {across:8.1f} us")
    print(f"posix_spawn /bin/true + wait (median):     {spawn_and_wait_us(['/bin/true'], spawns):8.1f} us")
    sh = spawn_and_wait_us(["/bin/sh", "-c", "exit 0"], spawns)
    print(f"posix_spawn /bin/sh -c 'exit 0' + wait:    {sh:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
