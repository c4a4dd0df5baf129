"""Start the real daemon as a process, as users do, and talk to it as a client would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import docker

from boxruntime.protocol import Peer, WebSocketConnection

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXRUNTIME_", "LANGBOT_BOX_"))}
    env["BOXRUNTIME_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT)
    # Tests count sandboxes exactly; the warm pool has its own tests and turns itself back on.
    env["BOXRUNTIME_POOL_SIZE"] = "0"
    env.update(extra)
    return env


@dataclass
class Daemon:
    """A ``boxruntime serve`` process on a free loopback port."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None
    host: str = "127.0.0.1"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/rpc/ws"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()[-3000:]}") from None
        return int(self.proc.returncode)

    def instance_id(self) -> str:
        """The instance id from the daemon's lock file (one running instance per data dir here)."""
        locks = list((self.data_dir / "instances").glob("*.lock"))
        assert len(locks) == 1, locks
        return locks[0].stem


def start_daemon(
    data_dir: Path,
    *args: str,
    token: str | None = None,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    wait: bool = True,
    python: Sequence[str] = (sys.executable,),
) -> Daemon:
    """``python``: how to run the interpreter (another one, or one behind a setpriv prefix)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir.parent / f"daemon-{port}.log"
    extra = dict(env or {})
    if token:
        extra["BOXRUNTIME_TOKEN"] = token
    argv = [*python, "-m", "boxruntime", "serve", "--host", host, "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=daemon_env(data_dir, **extra), cwd=ROOT)
    daemon = Daemon(data_dir, port, proc, log_path, token, host)
    if wait:
        wait_ready(daemon)
    return daemon


def wait_ready(daemon: Daemon, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((daemon.host, daemon.port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon did not listen within {timeout}s:\n{daemon.log()[-3000:]}")


@contextlib.asynccontextmanager
async def connect(daemon: Daemon, headers: dict[str, str] | None = None) -> AsyncIterator[Peer]:
    """Our own Peer over a real WebSocket to the daemon."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            daemon.url, headers=daemon.headers() if headers is None else headers, max_msg_size=16 << 20
        ) as ws,
    ):
        peer = Peer(WebSocketConnection(ws), name="test-client")
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.run)
            try:
                yield peer
            finally:
                tg.cancel_scope.cancel()


def containers_of(data_dir: Path, instance: str | None = None) -> list[str]:
    client = docker.from_env()
    labels = ["boxruntime.managed=true", f"boxruntime.data_dir={data_dir.resolve()}"]
    if instance:
        labels.append(f"boxruntime.instance={instance}")
    try:
        # One listing call: the high-level list() inspects each container afterwards, and fails
        # on one that the daemon removes in between.
        found = client.api.containers(all=True, filters={"label": labels})
        return [str(c["Names"][0]).lstrip("/") for c in found]
    finally:
        client.close()


def jails_of(data_dir: Path) -> list[int]:
    """Pids of live nsjail processes serving sessions of the daemon(s) on ``data_dir``."""
    marker = str(data_dir.resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = cmdline.split(b"\0")
        if argv and argv[0].endswith(b"nsjail") and marker in cmdline:
            pids.append(int(entry.name))
    return pids


def host_agents_of(data_dir: Path) -> list[int]:
    """Pids of live host-backend session agents of the daemon(s) on ``data_dir`` (not counting
    an agent's child caught between its fork and its exec, which still shows the agent's argv)."""
    marker = str(data_dir.resolve()).encode()
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if b"--host" in argv and any(a.endswith(b"boxagent.py") and a.startswith(marker) for a in argv):
            parents[int(entry.name)] = int(stat[stat.rfind(b")") + 2 :].split()[1])
    return [pid for pid, parent in parents.items() if parent not in parents]


def sandboxes_of(backend: str, data_dir: Path) -> list[str]:
    """The live sandboxes a backend keeps for ``data_dir``: containers, jail processes, or the
    host backend's session agents."""
    if backend in ("docker", "gvisor"):
        return containers_of(data_dir)
    if backend == "host":
        return [str(pid) for pid in host_agents_of(data_dir)]
    return [str(pid) for pid in jails_of(data_dir)]


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll OS state (another process's exit, files it removes) that offers nothing to await."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - there is no event for another process's state
            await anyio.sleep(interval)
