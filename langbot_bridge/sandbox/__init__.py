"""Sandboxes as objects: ``Sandbox`` with ``commands``, ``files``, ``processes`` and ``mcp``.

    async with Sandbox() as sbx:
        await sbx.files.write("hello.py", "print('hi')")
        result = await sbx.commands.run("python3 hello.py")

See ``langbot_bridge.sandbox.sandbox`` for which daemon a sandbox uses and how long it lives.
"""

from langbot_bridge.sandbox.commands import CommandExitError, CommandHandle, CommandResult, Commands
from langbot_bridge.sandbox.files import Files
from langbot_bridge.sandbox.mcp import McpServers
from langbot_bridge.sandbox.processes import Processes
from langbot_bridge.sandbox.sandbox import Sandbox, runtime_target

__all__ = [
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "Files",
    "McpServers",
    "Processes",
    "Sandbox",
    "runtime_target",
]
