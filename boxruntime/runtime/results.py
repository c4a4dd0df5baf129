"""Turning what a backend reports about a command into LangBot's exec result.

LangBot's backends keep at most 1 MiB per stream, decode it as UTF-8 with replacement, strip
surrounding whitespace and append a marker when bytes were discarded (reference §D.4);
``box_exec`` keeps that shape so LangBot's client reads it unchanged.
"""

from __future__ import annotations

from boxruntime.backends.contract import CompletedCommand
from boxruntime.models import EndReason, ExecResult, ExecStatus


def clipped_text(kept: bytes, total: int, cap: int) -> str:
    text = kept.decode("utf-8", "replace").strip()
    discarded = total - len(kept)
    if discarded > 0:
        text += f"\n... [raw output clipped at {cap} bytes, {discarded} bytes discarded]"
    return text


def exec_result(session_id: str, backend: str, done: CompletedCommand, timeout_sec: float, cap: int) -> ExecResult:
    exit = done.exit
    reason = EndReason(exit.reason)
    timed_out = reason == EndReason.TIMEOUT
    stderr = clipped_text(done.stderr, exit.stderr_total, cap)
    if timed_out and not stderr:
        stderr = f"Command timed out after {timeout_sec:g} seconds."
    return ExecResult(
        session_id=session_id,
        backend_name=backend,
        status=ExecStatus.TIMED_OUT if timed_out else ExecStatus.COMPLETED,
        exit_code=None if timed_out else exit.code,
        stdout=clipped_text(done.stdout, exit.stdout_total, cap),
        stderr=stderr,
        duration_ms=exit.wall_ms,
        end_reason=reason,
        signal=exit.signal,
        cpu_ms=exit.cpu_ms,
        peak_rss_kb=exit.peak_rss_kb,
        stdout_bytes=exit.stdout_total,
        stderr_bytes=exit.stderr_total,
    )
