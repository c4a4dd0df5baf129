"""The ``boxruntime`` command: the daemon's commands (serve, image build, doctor) and the client
commands of langbot_bridge (exec, sessions, status, skill …) under one name.

It lives outside both packages so that neither imports the other's insides: the daemon package
never imports langbot_bridge, and langbot_bridge uses only the daemon's public protocol.
"""

from __future__ import annotations

import argparse
import sys

from boxruntime import __version__
from boxruntime.edges import cli as daemon_cli
from langbot_bridge import cli as client_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxruntime", description="Sandbox runtime for AI agents.")
    parser.add_argument("--version", action="version", version=f"boxruntime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    daemon_cli.add_daemon_commands(sub)
    client_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``boxruntime`` command; returns the exit status."""
    return daemon_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
