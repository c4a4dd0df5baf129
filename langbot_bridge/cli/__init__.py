"""The ``boxruntime`` command's client commands: they talk to a daemon (running, or spawned for
the command) through langbot_bridge, as any other client would."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(sub: Any) -> None:
    """Register ``exec``, ``sessions``, ``status``, ``skill …`` and ``gateway`` on a parser's
    subparsers."""
    from langbot_bridge.cli.common import add_client_commands
    from langbot_bridge.cli.skill_commands import add_skill_commands

    add_client_commands(sub)
    add_skill_commands(sub)
    gateway = sub.add_parser("gateway", help="run the chat gateway (channels -> per-chat sandboxed agents)")
    gateway.add_argument("--config", type=Path, required=True, help="gateway.toml")
    gateway.add_argument("--check", action="store_true", help="validate the config and exit")
    gateway.add_argument("--log-level", default="info")
    gateway.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    """``boxruntime gateway``: run the chat gateway its config describes (``--check``: only check it)."""
    from langbot_bridge.gateway.cli import run

    return run(args.config, check_only=args.check)
