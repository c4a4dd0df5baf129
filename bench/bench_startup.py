"""Start-up: how long a new Python process takes to import langbot_bridge, and to run
``boxruntime exec --endpoint … -- true`` against a running daemon, end to end.

Targets (issue 18): ``import langbot_bridge`` ≤ 150 ms; ``boxruntime exec --endpoint … -- true``
≤ 300 ms wall, on a daemon whose warm pool is full.

    .venv/bin/python bench/bench_startup.py                 # Docker, 20 rounds
    .venv/bin/python bench/bench_startup.py --backend nsjail --rounds 30 --json out.json

Every round runs each kind once, in an order that rotates every round, so the kinds share the
machine's noise. Before each exec the bench waits until the daemon's pool is full again (the
one-off session of the previous exec took a sandbox from it), so every exec meets a warm daemon,
as a user's next command after a pause would. Next to the exec it times its two parts: the
interpreter importing what ``exec`` imports (``imports``), and the same create + exec + delete
done by a client that is already running (``daemon``: the WebSocket, the daemon, the sandbox).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TARGETS_MS = {"import langbot_bridge": 150.0, "boxruntime exec -- true": 300.0}
EXEC_IMPORTS = (
    "import boxruntime_cli, langbot_bridge.cli.exec_command, langbot_bridge.service, langbot_bridge.connector, anyio"
)


def kinds(url: str) -> dict[str, list[str]]:
    """What is timed, as command lines (a fresh process each)."""
    return {
        "python -c pass": [PYTHON, "-c", "pass"],
        "import langbot_bridge": [PYTHON, "-c", "import langbot_bridge"],
        "from langbot_bridge import Sandbox": [PYTHON, "-c", "from langbot_bridge import Sandbox"],
        "boxruntime --version": [PYTHON, "-m", "boxruntime_cli", "--version"],
        "imports of exec": [PYTHON, "-c", EXEC_IMPORTS],
        "boxruntime exec -- true": [PYTHON, "-m", "boxruntime_cli", "exec", "--endpoint", url, "--", "true"],
    }


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=120, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return elapsed


async def in_process_exec(url: str, rounds: int) -> list[float]:
    """create + exec + delete of a one-off session by a client already connected (the daemon's part)."""
    from langbot_bridge import BoxService, Connector, RemoteTarget

    samples = []
    async with Connector(RemoteTarget(url)) as link:
        await link.wait_available(60)
        service = BoxService(link)
        for index in range(rounds):
            await pool_full(service)
            started = time.perf_counter()
            result = await service.exec(f"bench-{index}", "true")
            await service.delete_session(f"bench-{index}")
            samples.append((time.perf_counter() - started) * 1000)
            assert result.ok, result
    return samples


async def pool_full(service: object, timeout: float = 90) -> None:
    status = service.status
    deadline = time.monotonic() + timeout
    while True:
        pool = (await status()).pool
        if pool is None or pool.ready >= pool.size:
            return
        if time.monotonic() > deadline:
            raise SystemExit("the daemon's pool did not fill within 90 s")
        await asyncio.sleep(0.05)


def wait_pool(url: str) -> None:
    async def once() -> None:
        from langbot_bridge import BoxService, Connector, RemoteTarget

        async with Connector(RemoteTarget(url), reconnect=False) as link:
            await link.wait_available(60)
            await pool_full(BoxService(link))

    asyncio.run(once())


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "min": ordered[0],
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("docker", "nsjail"), default="docker")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the samples and summaries here")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXRUNTIME_", "LANGBOT_BOX_"))}
    daemon_env = {**env, "BOXRUNTIME_DATA_DIR": str(data / "data"), "BOXRUNTIME_POOL_SIZE": str(args.pool_size)}
    argv = [PYTHON, "-m", "boxruntime", "serve", "--port", str(port), "--backend", args.backend]
    daemon = subprocess.Popen(argv, env=daemon_env, cwd=ROOT, stderr=(data / "daemon.log").open("wb"))
    url = f"ws://127.0.0.1:{port}"
    results: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    try:
        wait_listening(port, daemon)
        wait_pool(url)
        commands = kinds(url)
        names = list(commands)
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                if name == "boxruntime exec -- true":
                    wait_pool(url)
                results.setdefault(name, []).append(timed(commands[name], env))
        results["daemon (create + exec + delete, in process)"] = asyncio.run(in_process_exec(url, args.rounds))
    finally:
        daemon.terminate()
        daemon.wait(60)
    load_after = os.getloadavg()

    print(f"backend {args.backend}, {args.rounds} rounds, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'':46} {'min':>8} {'p50':>8} {'p95':>8}  target")
    summaries = {name: summary(samples) for name, samples in results.items()}
    for name, stats in summaries.items():
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else f"≤ {target:g} ms: {'met' if stats['p50'] <= target else 'missed'} (p50)"
        print(f"{name:46} {stats['min']:7.0f}ms {stats['p50']:7.0f}ms {stats['p95']:7.0f}ms  {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"load": [load_before, load_after], "samples": results, "summary": summaries}))
    return 0


def wait_listening(port: int, daemon: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the daemon did not listen within 60 s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
