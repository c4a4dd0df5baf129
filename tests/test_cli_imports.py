"""The daemon's process loads only what serving needs: every module it imports is resident memory."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_does_not_load_the_client_library_or_yaml() -> None:
    # What `boxruntime serve` imports: the CLI (all its parsers) and the server. YAML is only
    # needed once a skill's SKILL.md is read.
    probe = (
        "import sys, boxruntime.edges.cli, boxruntime.edges.server; "
        "print([m for m in sys.modules if m.startswith(('langbot_bridge', 'yaml'))])"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_client_commands_still_reach_the_library() -> None:
    # The lazy imports resolve: an unreachable endpoint fails cleanly with boxruntime's own exit
    # code for client errors, not with an ImportError.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "boxruntime_cli",
            "sessions",
            "--endpoint",
            "ws://127.0.0.1:9/rpc/ws",
            "--token",
            "x" * 40,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 125, result.stderr
    assert "ImportError" not in result.stderr and "boxruntime:" in result.stderr


def test_the_daemon_package_never_imports_langbot_bridge() -> None:
    """The layout's one-way rule, read from the code: no module of the daemon package imports the
    client library (the ``boxruntime`` command composes both from outside, in boxruntime_cli)."""
    import ast
    from pathlib import Path

    import boxruntime

    offenders = []
    for path in Path(boxruntime.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "langbot_bridge"]
    assert offenders == []
