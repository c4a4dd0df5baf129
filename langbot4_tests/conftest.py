"""Fixtures for driving our daemon with LangBot 4.11.2's own code (langbot-plugin 0.7.16).

This directory runs in .venv-langbot4 (``./dev test`` makes it); boxruntime is not importable
here, so the daemon is always a separate process (langbot4_tests/daemon.py). Like the main
suite, nothing here skips: a missing Docker engine or sandbox image is a failure.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# LangBot imports its application module before anything else; its tool loaders import each
# other in a cycle that only resolves in that order.
import langbot.pkg.core.app
import pytest

from langbot4_tests.client07 import LangBotLink, box_config, control_headers, over_stdio, over_websocket
from langbot4_tests.daemon import MAIN_PYTHON, SANDBOX_IMAGE, sandboxes_of, start_ws_daemon
from langbot4_tests.mcp_site import build_site


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # LangBot runs on asyncio


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not MAIN_PYTHON.exists():
        pytest.fail(f"{MAIN_PYTHON} missing: these tests start the daemon with the main venv (./dev test makes it)")
    probe = subprocess.run(["docker", "image", "inspect", SANDBOX_IMAGE], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"Docker engine or {SANDBOX_IMAGE} missing ({probe.stderr.strip()}); run ./dev test")


@pytest.fixture
def langbot_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LangBot's Handler keeps file transfers under ``data/temp/lbp`` of the current directory."""
    cwd = tmp_path / "langbot"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The daemon's own data directory."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """LangBot's ``box.local.host_root``; its ``default`` directory holds the tenant workspaces."""
    path = tmp_path / "box"
    (path / "default").mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def mcp_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield build_site(tmp_path_factory.mktemp("mcp") / "site")


# ── LangBot 0.7.16's client on a daemon ──────────────────────────────────


@pytest.fixture(params=["ws", "stdio"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend() -> str:
    """The sandbox backend; tests that also run on nsjail parametrize it."""
    return "docker"


@pytest.fixture
async def langbot(
    anyio_backend: str,
    transport: str,
    backend: str,
    data_dir: Path,
    host_root: Path,
    langbot_cwd: Path,
    mcp_site: Path,
    docker_engine: None,
) -> AsyncIterator[LangBotLink]:
    """LangBot 0.7.16's client connected as LangBot 4.11.2 connects, its box config sent.

    ``ws``: a daemon LangBot reaches at ``box.runtime.endpoint`` (token from
    LANGBOT_BOX_CONTROL_TOKEN, instance pinned by the first connection). ``stdio``: the daemon
    LangBot spawns itself. Either way the daemon must leave no sandbox behind.
    """
    config = box_config(host_root, backend, more_roots=(mcp_site.parent,))
    if transport == "ws":
        daemon = start_ws_daemon(data_dir, backend=backend)
        try:
            async with over_websocket(daemon.url, control_headers(), daemon.relay_base, config) as link:
                yield link
        finally:
            daemon.stop()
    else:
        async with over_stdio(data_dir, langbot_cwd, config) as link:
            yield link
    assert sandboxes_of(backend, data_dir) == [], "the daemon left sandboxes behind"
