"""MCP servers for sandboxes, from this (LangBot 4.11.2) venv.

Sandboxes have no pip and no network, so the code an MCP server needs is copied from here: the
real ``mcp-server-time`` with every distribution it imports (mcp 1.x, as LangBot pins it), and
``lb4_mcp_fixture``, a small server written here with a tool whose result is several hundred KB.
The directory is either mounted read-only into a session (``extra_mounts``, the 0.7 client
tests) or handed to LangBot as an MCP server's ``box.host_path``, which LangBot stages into the
tenant workspace itself (the LangBot 4.11.2 tests).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

from packaging.requirements import Requirement

SITE_MOUNT = "/opt/mcp-site"
FIXTURE_MODULE = "lb4_mcp_fixture"
# One JSON-RPC line far above the 64 KiB that LangBot's own 0.7 relay forwards per WS message.
BIG_RESULT_CHARS = 600_000

FIXTURE_SERVER = r'''
from mcp.server.fastmcp import FastMCP

server = FastMCP("lb4-fixture")


# structured_output=False: the text once, not also as {"result": ...}.
@server.tool(structured_output=False)
def big(size: int) -> str:
    """A text result of `size` characters."""
    return "".join(chr(ord("a") + i % 26) for i in range(size))


@server.tool(structured_output=False)
def echo(text: str) -> str:
    """Return the text as it came."""
    return text


if __name__ == "__main__":
    server.run()
'''


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


def build_site(site: Path) -> Path:
    """``site``: a ``PYTHONPATH`` entry holding mcp-server-time, its requirements and the
    fixture server, readable by the sandbox's unprivileged user."""
    site.mkdir(parents=True)
    for dist in distribution_closure(["mcp-server-time"]):
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages; bytecode the sandbox compiles itself
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(file))), target)
    (site / f"{FIXTURE_MODULE}.py").write_text(FIXTURE_SERVER)
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return site


def time_server_args() -> list[str]:
    return ["-m", "mcp_server_time", "--local-timezone", "UTC"]


def fixture_server_args() -> list[str]:
    return ["-m", FIXTURE_MODULE]
