"""An MCP server inside a sandbox: mcp-server-time, called through the MCP SDK.

The sandbox has no pip and no network, so the server's packages are installed on this host
for the sandbox's Python and copied in (``packages=``). Once:

    .venv/bin/pip install --target mcp-packages --python-version 3.11 --only-binary=:all: mcp-server-time

then:

    .venv/bin/python examples/mcp_in_box.py mcp-packages

It uses ``$BOXRUNTIME_ENDPOINT`` (e.g. the daemon of ``./dev serve``) or spawns a local daemon.
"""

from __future__ import annotations

import asyncio
import sys

from langbot_bridge import Sandbox


async def main(packages: str) -> None:
    async with Sandbox() as sbx:
        server = await sbx.mcp.start(
            "time", "python3", ["-m", "mcp_server_time", "--local-timezone", "UTC"], packages=packages
        )
        for tool in await server.list_tools():
            print(f"tool: {tool.name}")
        result = await server.call_tool(
            "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        print(result.content[0].text)  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "mcp-packages"))
