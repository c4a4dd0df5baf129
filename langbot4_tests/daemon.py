"""Our daemon as a process, started with the main venv's python.

These tests run in the LangBot 4.11.2 venv (.venv-langbot4), where boxruntime is not installed
(LangBot pins mcp 1.x, boxruntime needs mcp 2.x): nothing here imports it. The daemon is
``ROOT/.venv/bin/python -m boxruntime serve ...``, the way an operator runs it next to LangBot.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
# What LangBot's connector runs as ``sys.executable`` for its local (stdio) Box runtime: a
# script that turns LangBot's own argv into ``boxruntime serve`` with the same flags.
LANGBOT_BOX_PYTHON = Path(__file__).resolve().parent / "langbot_box_python.sh"
# The checkout whose boxruntime the daemons run: this one, unless LB4_TESTS_DAEMON_SOURCE names
# another (to try these tests on a daemon in progress).
DAEMON_SOURCE = Path(os.environ.get("LB4_TESTS_DAEMON_SOURCE", str(ROOT)))
SANDBOX_IMAGE = "boxruntime/sandbox:latest"
# LangBot's control token is token_urlsafe(48) when it makes one up; any ≥ 32 characters do.
TOKEN = "lb4-tests-control-token-0123456789abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a daemon process: this one's, less any daemon setting it may carry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOXRUNTIME_", "LANGBOT_BOX_"))}
    env.update(daemon_settings(data_dir))
    env.update(extra)
    return env


def daemon_settings(data_dir: Path) -> dict[str, str]:
    """What every daemon here runs with: its data dir, no warm pool (tests count sandboxes
    exactly), the checkout whose boxruntime it runs."""
    return {
        "BOXRUNTIME_DATA_DIR": str(data_dir),
        "BOXRUNTIME_POOL_SIZE": "0",
        "PYTHONPATH": str(DAEMON_SOURCE),
    }


def stdio_args(relay_port: int) -> list[str]:
    """The daemon's argv tail over stdio, as LangBot builds it for ``lbp box``."""
    return ["-m", "boxruntime", "serve", "-s", "--ws-control-port", str(relay_port)]


@dataclass
class Daemon:
    """A ``boxruntime serve`` process serving WebSocket control on a loopback port."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        """What goes into LangBot's ``box.runtime.endpoint``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.endpoint}/rpc/ws"

    @property
    def relay_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()[-3000:]}") from None
        return int(self.proc.returncode)


def start_ws_daemon(
    data_dir: Path,
    *,
    backend: str = "docker",
    token: str | None = TOKEN,
    trusted_instance: str | None = None,
    box_config: dict[str, object] | None = None,
) -> Daemon:
    """``boxruntime serve --ws-control-port N`` (WebSocket control, LangBot's flag for the port),
    with LangBot's environment: its control token, and optionally its pinned instance and config."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = {"BOXRUNTIME_BACKEND": backend}
    if token is not None:
        extra["LANGBOT_BOX_CONTROL_TOKEN"] = token
    if trusted_instance is not None:
        extra["LANGBOT_BOX_TRUSTED_INSTANCE_UUID"] = trusted_instance
    if box_config is not None:
        extra["LANGBOT_BOX_CONFIG"] = json.dumps(box_config)
    log_path = data_dir.parent / f"daemon-{port}.log"
    argv = [str(MAIN_PYTHON), "-m", "boxruntime", "serve", "--host", "127.0.0.1", "--ws-control-port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=daemon_env(data_dir, **extra), cwd=DAEMON_SOURCE
        )
    daemon = Daemon(data_dir, port, proc, log_path)
    wait_listening(daemon)
    return daemon


def wait_listening(daemon: Daemon, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", daemon.port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon did not listen within {timeout}s:\n{daemon.log()[-3000:]}")


# ── what the daemon leaves on the machine ────────────────────────────────


def containers_of(data_dir: Path) -> list[str]:
    """Containers (running or not) that a daemon on ``data_dir`` made."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            "label=boxruntime.managed=true",
            "--filter",
            f"label=boxruntime.data_dir={data_dir.resolve()}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


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


def sandboxes_of(backend: str, data_dir: Path) -> list[str]:
    if backend == "docker":
        return containers_of(data_dir)
    return [str(pid) for pid in jails_of(data_dir)]
