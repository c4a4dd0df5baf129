"""What the MCP tests and the MCP benchmark run inside sandboxes: a small MCP server written
here, and the real mcp-server-time from PyPI with everything it imports, copied from this venv
into a directory that is mounted read-only into sessions (sandboxes have no pip and no network).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from langbot_bridge.mcp import (
    McpServerSpec,
    RelayPolicy,
)

pytestmark = [pytest.mark.anyio]


@pytest.fixture(scope="session")
def mcp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mcp_root(tmp_path_factory.mktemp("mcp-root"))


SITE_MOUNT = "/opt/mcp-site"
WHEELS_MOUNT = "/opt/mcp-wheels"
ENV = {"PYTHONPATH": SITE_MOUNT}
FIXTURE_MODULE = "boxmcp_fixture"
WHEELED_PROJECT = "boxmcp-wheeled"
WHEELED_MODULE = "boxmcp_wheeled"
# Short relay backoff: the tests cut links on purpose and wait for the transport to come back.
FAST_RELAY = RelayPolicy(backoff_initial=0.05, backoff_max=0.5, give_up_after=120)

# The small MCP server: state (counter), a large result, a slow tool whose reply can be written
# while nobody is attached, a crash with a stderr message, a resource and a prompt.
FIXTURE_SERVER = r'''
import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("boxmcp-fixture")
calls = 0


@server.tool()
def echo(text: str) -> str:
    """Return the text as it came."""
    return text


@server.tool()
def big(size: int) -> str:
    """A text result of `size` characters."""
    return "x" * size


@server.tool()
def counter() -> str:
    """Count the calls this process has served; name the process."""
    global calls
    calls += 1
    return f"count={calls} pid={os.getpid()}"


@server.tool()
async def slow(seconds: float, tag: str) -> str:
    """Answer `done <tag>` after `seconds`."""
    print(f"slow {tag} started", file=sys.stderr, flush=True)
    await anyio.sleep(seconds)
    return f"done {tag}"


@server.tool()
def crash(code: int) -> str:
    """Exit at once with `code`, saying why on stderr."""
    print(f"fatal: crash requested with code {code}", file=sys.stderr, flush=True)
    os._exit(code)


@server.resource("note://hello")
def hello() -> str:
    return "hello from the box"


@server.prompt()
def greet(name: str) -> str:
    return f"Say hello to {name}."


if __name__ == "__main__":
    server.run()
'''


# ── the code the sandbox runs: this venv's distributions, copied ──────────


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_closure(roots: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``roots`` need, requirements (and extras) followed."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in roots]
    expanded: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        if (_key(name), extras) in expanded:
            continue
        expanded.add((_key(name), extras))
        dist = importlib.metadata.distribution(name)
        found.setdefault(_key(name), dist)
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                pending.append((requirement.name, tuple(sorted(requirement.extras))))
    return list(found.values())


def copy_distributions(roots: list[str], site: Path) -> None:
    """Copy the installed files of ``roots`` and their requirements into ``site`` (a
    ``PYTHONPATH`` entry; scripts outside site-packages are left out)."""
    for dist in distribution_closure(roots):
        for file in dist.files or []:
            if file.parts[0] == "..":
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(file))), target)


def build_wheel(directory: Path, project: str, module: str, source: str) -> Path:
    """A pure-Python wheel holding one module."""
    version = "1.0"
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}.py": source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def build_mcp_root(root: Path) -> Path:
    """``root/site``: mcp-server-time, pip and the fixture server; ``root/wheels``: one wheel."""
    site, wheels = root / "site", root / "wheels"
    site.mkdir(parents=True)
    wheels.mkdir()
    copy_distributions(["mcp-server-time", "pip"], site)
    (site / f"{FIXTURE_MODULE}.py").write_text(FIXTURE_SERVER)
    build_wheel(wheels, WHEELED_PROJECT, WHEELED_MODULE, FIXTURE_SERVER.replace("boxmcp-fixture", "boxmcp-wheeled"))
    for path in [root, *root.rglob("*")]:  # readable by the sandbox's unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def mounts(root: Path) -> dict[str, Any]:
    return {
        "extra_mounts": [
            {"host_path": str(root / "site"), "mount_path": SITE_MOUNT, "mode": "ro"},
            {"host_path": str(root / "wheels"), "mount_path": WHEELS_MOUNT, "mode": "ro"},
        ]
    }


def fixture_spec(name: str = "fixture") -> McpServerSpec:
    return McpServerSpec(name=name, command="python3", args=["-m", FIXTURE_MODULE], env=ENV)


TIME_SPEC = McpServerSpec(
    name="time", command="python3", args=["-m", "mcp_server_time", "--local-timezone", "UTC"], env=ENV
)


# ── daemons ──────────────────────────────────────────────────────────────
