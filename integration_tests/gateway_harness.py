"""The chat gateway as users run it: ``boxruntime gateway --config gateway.toml`` in its own
process, in front of a real daemon; killed with SIGKILL when a test needs a crash."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import docker
import pytest

from boxruntime.errors import BoxSessionNotFoundError
from boxruntime.models import FsRequest, FsWriteRequest
from integration_tests.daemon import ROOT, Daemon, connect, containers_of, eventually, free_port, start_daemon
from langbot_bridge import BoxClient


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        # TOML has no null: an unset value is left out, as the settings' defaults are None.
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML for {value!r}")


def render_toml(sections: dict[str, Any]) -> str:
    """``{"server": {...}, "channel": [{...}, ...]}`` as TOML (tables and arrays of tables)."""
    lines: list[str] = []
    for name, body in sections.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


@dataclass
class GatewayProcess:
    """One gateway; ``start()`` again after ``kill()`` reuses its data dir (a restart)."""

    workdir: Path
    daemon: Daemon
    channels: list[dict[str, Any]]
    agent: dict[str, Any] = field(default_factory=lambda: {"kind": "command"})
    env: dict[str, str] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # more [section] settings
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def config(self) -> dict[str, Any]:
        sections: dict[str, Any] = {
            "gateway": {"data_dir": str(self.workdir / "data"), "box_wait_sec": 30},
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": self.url},
            "box": {"endpoint": self.daemon.url},
            "agent": self.agent,
        }
        for name, values in self.extra.items():
            sections[name] = {**sections.get(name, {}), **values}
        sections["channel"] = self.channels
        return sections

    def start(self, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "gateway.toml"
        path.write_text(render_toml(self.config()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOXRUNTIME_")}
        env |= {"PYTHONPATH": str(ROOT), **self.env}
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"---- run {self.runs} ----\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "boxruntime_cli", "gateway", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if json.load(response).get("sandbox_available"):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not healthy within {timeout}s:\n{self.log()[-4000:]}")

    async def astart(self, timeout: float = 60) -> None:
        """``start`` from async code: waits without blocking the event loop (where the test's
        platform peers answer the gateway)."""
        self.start(wait=False)
        with anyio.fail_after(timeout):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
                try:
                    async with aiohttp.ClientSession() as http, http.get(f"{self.url}/healthz") as response:
                        if (await response.json()).get("sandbox_available"):
                            return
                except (aiohttp.ClientError, OSError, ValueError):
                    pass
                await anyio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush; whatever was committed is all there is."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway did not stop on SIGTERM:\n{self.log()[-4000:]}") from None

    async def diagnostics(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/diagnostics") as response:
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async def counter(self, channel: str, name: str) -> int:
        return int((await self.diagnostics())["counters"].get(channel, {}).get(name, 0))

    async def store_counts(self, channel: str) -> dict[str, int]:
        counts: dict[str, int] = (await self.diagnostics())["store"].get(channel, {})
        return counts

    async def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        """Poll the diagnostics (another process's state) until ``check`` holds."""
        with anyio.fail_after(timeout):
            while True:
                found = await self.diagnostics()
                if check(found):
                    return found
                await anyio.sleep(0.05)


async def box_write(daemon: Daemon, session_id: str, path: str, data: bytes = b"") -> None:
    """Write a file into a session through the daemon's own file API (to release a command
    that waits for it)."""
    async with connect(daemon) as peer:
        request = FsWriteRequest(
            session_id=session_id, path=path, data=base64.b64encode(data).decode(), encoding="base64"
        )
        await BoxClient(peer).fs_write(request)


async def box_exists(daemon: Daemon, session_id: str, path: str) -> bool:
    async with connect(daemon) as peer:
        try:
            return (await BoxClient(peer).fs_stat(FsRequest(session_id=session_id, path=path))).exists
        except BoxSessionNotFoundError:
            return False


async def wait_box_file(daemon: Daemon, session_id: str, path: str, timeout: float = 60) -> None:
    """Until ``path`` exists in the session (a command in it reached a point)."""
    with anyio.fail_after(timeout):
        while not await box_exists(daemon, session_id, path):  # noqa: ASYNC110 - another process's state
            await anyio.sleep(0.05)


@contextmanager
def shared_daemon(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[Daemon]:
    """One Docker daemon for a module's gateway tests (each test uses its own chats, so its own
    sessions); it must leave no container behind."""
    client = docker.from_env()
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Docker engine not reachable ({exc}); run the suite with ./dev test")
    finally:
        client.close()
    data_dir = tmp_path_factory.mktemp("gateway-daemon") / "data"
    daemon = start_daemon(data_dir, "--backend", "docker", *args)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert containers_of(data_dir) == [], "the daemon left containers behind"


__all__ = ["GatewayProcess", "box_exists", "box_write", "eventually", "render_toml", "shared_daemon", "wait_box_file"]
