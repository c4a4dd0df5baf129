"""The ``boxruntime`` command's client commands: they talk to a daemon (running, or spawned for
the command) through langbot_bridge, as any other client would."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:
    """Register ``exec``, ``sessions``, ``status`` and ``skill …`` on a parser's subparsers."""
    from langbot_bridge.cli.common import add_client_commands
    from langbot_bridge.cli.skill_commands import add_skill_commands

    add_client_commands(sub)
    add_skill_commands(sub)
