"""The ``exec`` tool: a shell command in the chat's sandbox, output cut to fit an LLM's context."""

from __future__ import annotations

from typing import Any

import pydantic

from boxruntime.models import DEFAULT_MOUNT_PATH, EndReason, ExecResult, ExecStatus
from langbot_bridge.tools.base import Tool, ToolArgs, ToolResult, ToolScope


class ExecArgs(ToolArgs):
    """Arguments of the ``exec`` tool."""

    command: str = pydantic.Field(min_length=1, description="Shell command, run with /bin/sh -c in the sandbox.")
    workdir: str = pydantic.Field(
        default=DEFAULT_MOUNT_PATH, description="Absolute working directory inside the sandbox."
    )
    timeout_sec: int | None = pydantic.Field(
        default=None, ge=1, description="Time limit in seconds (capped by the sandbox profile)."
    )
    env: dict[str, str] = pydantic.Field(default_factory=dict, description="Extra environment variables.")
    description: str = pydantic.Field(default="", description="Why you run this (recorded in the audit log).")


class ExecToolResult(ToolResult):
    """``exec``: exit code and output, cut for a model."""

    session_id: str
    status: str
    exit_code: int | None
    end_reason: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int


async def run_exec(args: ExecArgs, scope: ToolScope) -> ToolResult:
    """The ``exec`` tool: a shell command in the chat's sandbox."""
    request: dict[str, Any] = {"workdir": args.workdir, "env": args.env}
    if args.timeout_sec is not None:
        request["timeout_sec"] = args.timeout_sec
    actor = f"{scope.actor} ({args.description})" if args.description else scope.actor
    result = await scope.service.exec(scope.session_id, args.command, request, chat=scope.chat, actor=actor)
    stdout = scope.service.truncate(result.stdout)
    stderr = scope.service.truncate(result.stderr)
    error = _failure(result)
    return ExecToolResult(
        ok=error is None,
        error=error,
        session_id=result.session_id,
        status=result.status.value,
        exit_code=result.exit_code,
        end_reason=result.end_reason.value,
        stdout=stdout.text,
        stderr=stderr.text,
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
        duration_ms=result.duration_ms,
    )


def _failure(result: ExecResult) -> str | None:
    if result.status == ExecStatus.TIMED_OUT:
        return f"command timed out after {result.duration_ms / 1000:g} s; the limit is timeout_sec"
    if result.end_reason == EndReason.OOM:
        return "command was killed: out of memory (the sandbox's memory limit)"
    if result.signal:
        return f"command was killed by signal {result.signal}"
    if result.exit_code != 0:
        return f"command exited with code {result.exit_code}"
    return None


EXEC = Tool(
    name="exec",
    description=(
        "Run a shell command in your sandbox (a Linux container; files persist in /workspace "
        "between calls). Returns exit code, stdout and stderr; long output is cut in the middle."
    ),
    args=ExecArgs,
    run=run_exec,
)
