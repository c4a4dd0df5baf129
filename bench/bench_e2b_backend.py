"""What the e2b backend adds per exec over the E2B front door it talks to, in one interleaved run.

Two ``boxruntime serve`` processes on loopback, as in the tests (integration_tests/e2b_cluster.py):

- **B**, the "E2B cluster": ``--backend docker`` (or nsjail), speaking E2B's API on its port;
- **A**: ``--backend e2b`` with ``E2B_API_URL`` = ``E2B_SANDBOX_URL`` = B.

One sandbox serves every kind below: A's session ``bench`` is an E2B sandbox on B, which B keeps
as its session ``e2b-<id>``. Each kind runs ``echo hi`` in it (or asks nothing), timed from the
bench process, in blocks of 20 back to back after a 0.5 s pause, the kinds taking turns to lead
(as bench_e2b.py measures):

- ``through A``: LangBot's client → A (``box_exec``) → the e2b backend → B's envd → the sandbox;
- ``A no-op``: LangBot's client → A (``box_get_session``): the client, the WebSocket and A's
  dispatch, nothing of the sandbox;
- ``envd on B``: what the e2b backend sends B for that exec (envd ``Start`` of ``/bin/sh -c
  'echo hi'``), sent from the bench process with the same SDK client: B's front door alone;
- ``RPC on B``: LangBot's client → B (``box_exec``) in B's session of that same sandbox;
- ``SDK on B``: E2B's SDK, ``AsyncSandbox.commands.run("echo hi")`` on that sandbox (``bash -l``).

The backend's own cost is ``through A`` - ``A no-op`` - ``envd on B`` (the target: ≤ 2 ms p50);
the table also gives ``through A`` next to ``RPC on B`` and ``SDK on B`` (what a client saves or
pays by going to B itself).

    .venv/bin/python bench/bench_e2b_backend.py                 # Docker on B: about a minute
    .venv/bin/python bench/bench_e2b_backend.py --backend nsjail --warm 100 --json /tmp/e2bb.json
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_daemons import DaemonProc, clean_env, free_port, preflight
from bench_harness import DEFAULT_IMAGE, ROOT, BenchError, Side, connect, disconnect, log
from bench_report import pct, write_medians

BLOCK = 20
SETTLE_SEC = 0.5
KEY = "bench"
KINDS = ("through_a", "a_noop", "envd_b", "rpc_b", "sdk_b")
LABELS = {
    "through_a": "through A (e2b backend)",
    "a_noop": "A no-op RPC",
    "envd_b": "envd on B",
    "rpc_b": "RPC on B",
    "sdk_b": "SDK on B",
}


def start_daemon(work: Path, name: str, argv: list[str], env: dict[str, str]) -> DaemonProc:
    data_dir = work / f"{name}-data"
    data_dir.mkdir()
    port = free_port()
    log_path = work / f"{name}.log"
    full = {**clean_env(), **env, "BOXRUNTIME_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    full["BOXRUNTIME_POOL_SIZE"] = "0"
    command = [sys.executable, "-m", "boxruntime", "serve", "--host", "127.0.0.1", "--port", str(port), *argv]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full, cwd=ROOT)
    daemon = DaemonProc(name, port, proc, log_path, signal.SIGTERM)
    daemon.wait_listening()
    return daemon


class Kinds:
    """The ways to run ``echo hi`` in the one sandbox."""

    def __init__(self, a: Side, b: Side, b_url: str) -> None:
        self.a, self.b, self.b_url = a, b, b_url
        self.a_spec: Any = None
        self.b_spec: Any = None
        self.sandbox: Any = None
        self.rpc: Any = None

    async def open(self) -> None:
        from e2b import AsyncSandbox
        from e2b.envd.client_async import create_rpc_client
        from e2b.envd.process import process_connect
        from langbot_plugin.box.models import BoxSpec

        self.a_spec = BoxSpec(session_id="bench", cmd="echo hi", image=DEFAULT_IMAGE)
        created = await self.a.client.create_session(self.a_spec)
        sandbox_id = created["backend_session_id"]
        info = await self.b.client.get_session(f"e2b-{sandbox_id}")
        fields = ("image", "mount_path", "network", "cpus", "memory_mb", "pids_limit", "read_only_rootfs")
        self.b_spec = BoxSpec(
            session_id=info["session_id"], cmd="echo hi", workdir=info["mount_path"], **{f: info[f] for f in fields}
        )
        self.sandbox = await AsyncSandbox.connect(sandbox_id, api_key=KEY, api_url=self.b_url, sandbox_url=self.b_url)
        self.rpc = create_rpc_client(
            process_connect.ProcessClient, self.sandbox.envd_api_url, self.sandbox.connection_config
        )

    async def envd_run(self) -> bytes:
        """What the e2b backend sends B for ``box_exec`` ``echo hi`` (backends/e2b/command_request.py)."""
        from boxruntime.backends.contract import Command
        from boxruntime.backends.e2b.command_request import start_request
        from boxruntime.backends.e2b.paths import SandboxPaths

        request = start_request(
            Command(cwd="/workspace", script="echo hi", timeout=30.0), SandboxPaths.build("/workspace")
        )
        out = b""
        async for message in self.rpc.start(request, headers={"Keepalive-Ping-Interval": "50"}, timeout_ms=30_000):
            event = message.event.event if message.event is not None else None
            if event is not None and event.field == "data":
                out += event.value.output.value
        return out

    async def once(self, kind: str) -> str:
        if kind == "through_a":
            return str((await self.a.client.execute(self.a_spec)).stdout)
        if kind == "a_noop":
            await self.a.client.get_session("bench")
            return "hi"
        if kind == "envd_b":
            return (await self.envd_run()).decode().strip()
        if kind == "rpc_b":
            return str((await self.b.client.execute(self.b_spec)).stdout)
        return str((await self.sandbox.commands.run("echo hi")).stdout).strip()

    async def block(self, kind: str, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            out = await self.once(kind)
            samples.append((time.perf_counter() - start) * 1000)
            if out != "hi":
                raise BenchError(f"{LABELS[kind]}: unexpected output {out!r}")
        return samples


async def bench(args: argparse.Namespace, a: DaemonProc, b: DaemonProc) -> dict[str, Any]:
    side_a, side_b = Side("ours", "A", a), Side("ours", "B", b)
    await connect(side_a)
    await connect(side_b)
    kinds = Kinds(side_a, side_b, f"http://127.0.0.1:{b.port}")
    try:
        await kinds.open()
        for kind in KINDS:
            await kinds.block(kind, 5)  # warm-up, untimed
        burst: dict[str, list[float]] = {k: [] for k in KINDS}
        idle: dict[str, list[float]] = {k: [] for k in KINDS}
        log(f"{args.warm} runs per kind, in blocks of {BLOCK}")
        for i in range(-(-args.warm // BLOCK)):
            for kind in KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]:
                await asyncio.sleep(SETTLE_SEC)
                samples = await kinds.block(kind, min(BLOCK, args.warm - i * BLOCK))
                idle[kind].append(samples[0])
                burst[kind].extend(samples[1:])
    finally:
        await disconnect(side_a)
        await disconnect(side_b)
    return {"burst": burst, "after_idle": idle}


def report(samples: dict[str, Any]) -> str:
    def p(kind: str, q: float = 50, key: str = "burst") -> float:
        value = pct(samples[key][kind], q)
        return float("nan") if value is None else value

    lines = ["| kind | p50 back to back | p95 back to back | p50 after idle |", "|---|---:|---:|---:|"]
    for kind in KINDS:
        lines.append(
            f"| {LABELS[kind]} | {p(kind):.2f} ms | {p(kind, 95):.2f} ms | {p(kind, key='after_idle'):.2f} ms |"
        )
    added = p("through_a") - p("a_noop") - p("envd_b")
    lines += [
        "",
        f"e2b backend's own cost per exec (p50): through A - A no-op - envd on B = {added:.2f} ms (target <= 2 ms)",
        f"through A vs RPC on B (p50): {p('through_a') - p('rpc_b'):+.2f} ms ({p('through_a') / p('rpc_b'):.2f}x)",
        f"through A vs SDK on B (p50): {p('through_a') - p('sdk_b'):+.2f} ms ({p('through_a') / p('sdk_b'):.2f}x)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("docker", "nsjail"), default="docker", help="B's backend")
    parser.add_argument("--warm", type=int, default=200, help="timed runs per kind")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    try:
        log(f"preflight: {preflight(args.image, args.backend)}")
        with tempfile.TemporaryDirectory(prefix="bench-e2b-backend-") as work:
            image = {"BOXRUNTIME_DEFAULT_IMAGE": args.image}
            b = start_daemon(Path(work), "B", ["--backend", args.backend], image)
            a = None
            try:
                url = f"http://127.0.0.1:{b.port}"
                e2b = {"E2B_API_KEY": KEY, "E2B_API_URL": url, "E2B_SANDBOX_URL": url}
                a = start_daemon(Path(work), "A", ["--backend", "e2b"], {**image, **e2b})
                samples = asyncio.run(bench(args, a, b))
            finally:
                if a is not None:
                    log(f"A {a.stop()}")
                log(f"B {b.stop()}")
    except BenchError as exc:
        print(f"bench_e2b_backend: {exc}", file=sys.stderr)
        return 1
    print(f"B on {args.backend}; {args.warm} runs of `echo hi` per kind")
    print(report(samples))
    if args.json:
        write_medians(args, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
