"""The ``glob`` and ``grep`` tools. The daemon has no search actions, so each call runs
``sandbox_search.py`` inside the sandbox with ``python3 -`` and reads the one JSON line it
prints (LangBot's approach, reference §E.5) — nothing is read on the host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pydantic

from boxruntime.models import DEFAULT_MOUNT_PATH, ExecStatus
from langbot_bridge.tools.base import Tool, ToolArgs, ToolError, ToolResult, ToolScope

SCRIPT = (Path(__file__).with_name("sandbox_search.py")).read_text(encoding="utf-8")
SCRIPT_TIMEOUT_SEC = 30
ARGS_ENV = "BOXTOOL_ARGS"
_HEREDOC_END = "BOXTOOL_SCRIPT_END"
# The request travels in the environment, so nothing the model writes is ever parsed by a shell.
COMMAND = f"python3 - <<'{_HEREDOC_END}'\n{SCRIPT}\n{_HEREDOC_END}"
assert f"\n{_HEREDOC_END}\n" not in f"\n{SCRIPT}\n"


async def run_script(scope: ToolScope, request: dict[str, Any], summary: str) -> dict[str, Any]:
    """Run the search script in the sandbox; its JSON reply, or ToolError saying why not."""
    result = await scope.service.exec(
        scope.session_id,
        COMMAND,
        {"env": {ARGS_ENV: json.dumps(request)}, "timeout_sec": SCRIPT_TIMEOUT_SEC, "workdir": DEFAULT_MOUNT_PATH},
        chat=scope.chat,
        actor=scope.actor,
        audit_command=summary,
    )
    if result.status == ExecStatus.TIMED_OUT:
        raise ToolError(f"{request['op']} did not finish within {SCRIPT_TIMEOUT_SEC} s; narrow the path or pattern")
    if result.exit_code == 127:
        raise ToolError(f"Python 3 interpreter not found in the sandbox image, which {request['op']} needs")
    lines = result.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise ToolError(f"{request['op']} failed in the sandbox (exit {result.exit_code}): {detail}")
    if not reply.get("ok"):
        raise ToolError(str(reply.get("error") or f"{request['op']} failed"))
    return reply


# ── glob ────────────────────────────────────────────────────────────────


class GlobArgs(ToolArgs):
    """Arguments of the ``glob`` tool."""

    pattern: str = pydantic.Field(
        min_length=1, description="Glob such as '*.py', 'src/**/*.ts' or '/workspace/**/test_*.py'."
    )
    path: str = pydantic.Field(default=DEFAULT_MOUNT_PATH, description="Directory to search from.")


class GlobResult(ToolResult):
    """``glob``: the matching paths."""

    matches: list[str]  # absolute paths of files, newest first
    total: int
    truncated: bool
    truncated_by: Literal["scan", "matches", "bytes"] | None = None


async def run_glob(args: GlobArgs, scope: ToolScope) -> ToolResult:
    """The ``glob`` tool, run inside the sandbox by the search script."""
    reply = await run_script(
        scope, {"op": "glob", "pattern": args.pattern, "path": args.path}, f"[glob] {args.pattern} in {args.path}"
    )
    return GlobResult.model_validate({k: v for k, v in reply.items() if k != "root"})


GLOB = Tool(
    name="glob",
    description=(
        "Find files in your sandbox by name pattern ('**' spans directories). Returns at most "
        "100 paths, newest first; skips .git, node_modules, __pycache__, virtualenvs, dist, build."
    ),
    args=GlobArgs,
    run=run_glob,
)


# ── grep ────────────────────────────────────────────────────────────────


class GrepArgs(ToolArgs):
    """Arguments of the ``grep`` tool."""

    pattern: str = pydantic.Field(min_length=1, max_length=1024, description="Python regular expression.")
    path: str = pydantic.Field(default=DEFAULT_MOUNT_PATH, description="File or directory to search.")
    include: str = pydantic.Field(
        default="", description="Only files matching this glob (e.g. '*.py'; with '/', on the relative path)."
    )
    ignore_case: bool = pydantic.Field(default=False, description="Case-insensitive matching.")


class GrepMatch(pydantic.BaseModel):
    """One matching line: file, line number, text."""

    file: str
    line: int
    content: str


class GrepResult(ToolResult):
    """``grep``: the matching lines."""

    matches: list[GrepMatch]
    files_scanned: int
    truncated: bool
    truncated_by: Literal["matches", "files", "bytes_scanned", "scan", "bytes"] | None = None


async def run_grep(args: GrepArgs, scope: ToolScope) -> ToolResult:
    """The ``grep`` tool, run inside the sandbox by the search script."""
    request = {"op": "grep", **args.model_dump()}
    reply = await run_script(scope, request, f"[grep] {args.pattern!r} in {args.path}")
    return GrepResult.model_validate(reply)


GREP = Tool(
    name="grep",
    description=(
        "Search file contents in your sandbox with a regular expression. Returns up to 200 "
        "matching lines as {file, line, content}; binary files are skipped."
    ),
    args=GrepArgs,
    run=run_grep,
)
