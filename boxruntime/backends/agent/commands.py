"""What the daemon asks the agent to run, and what it gets back; the agent's exit events are
checked here, since everything the agent sends is untrusted input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.contract import CommandExit, CompletedCommand, Output

__all__ = [
    "CommandExit",
    "CommandRequest",
    "CompletedCommand",
    "Event",
    "Output",
    "event_int",
    "parse_exit",
    "spawn_header",
]


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """What to run in the sandbox. ``script`` runs under /bin/sh; ``argv`` runs directly."""

    cwd: str
    env: dict[str, str]
    script: str | None = None
    argv: list[str] | None = None
    timeout: float | None = None
    output_cap: int | None = None
    stdin: bool = False  # a stdin pipe: the daemon writes to it directly (handoff) or via ``input``
    tty: tuple[int, int] | None = None  # (rows, cols): run on a new terminal of that size
    keep_on_disconnect: bool = False  # survives a lost connection; only with handoff
    notify_started: bool = False  # the agent reports the pid (a frame execs do without)
    handoff: bool = False  # the daemon takes the process's pipes (take_fds) instead of frames
    # On timeout: SIGTERM, then SIGKILL this much later (None: SIGKILL at once).
    kill_grace: float | None = None
    make_cwd: bool = True  # create a missing workdir (else the spawn fails, naming it)
    pty: tuple[int, int] | None = None  # (cols, rows): on a terminal; only with handoff and stdin


Event = Output | CommandExit


def spawn_header(req: CommandRequest, proc_id: str, collect: bool) -> dict[str, Any]:
    """The agent's ``spawn`` request for ``req`` (its script goes in the body)."""
    header: dict[str, Any] = {
        wire.OP: wire.Op.SPAWN,
        wire.ID: proc_id,
        wire.Spawn.CWD: req.cwd,
        wire.Spawn.ENV: req.env,
        wire.Spawn.TIMEOUT: req.timeout,
        wire.Spawn.OUTPUT_CAP: req.output_cap,
        wire.Spawn.STDIN: req.stdin,
        wire.Spawn.KEEP_ON_DISCONNECT: req.keep_on_disconnect,
        wire.Spawn.NOTIFY_STARTED: req.notify_started,
        wire.Spawn.HANDOFF: req.handoff,
        wire.Spawn.MAKE_CWD: req.make_cwd,
    }
    if req.pty is not None:
        header[wire.Spawn.PTY] = list(req.pty)
    if req.argv is not None:
        header[wire.Spawn.ARGV] = req.argv
    if req.kill_grace:
        header[wire.Spawn.KILL_GRACE] = req.kill_grace
    if req.tty is not None:
        header[wire.Spawn.TTY] = {wire.Window.ROWS: req.tty[0], wire.Window.COLS: req.tty[1]}
    if collect:
        header[wire.Spawn.COLLECT] = True
    return header


def event_int(header: dict[str, Any], key: str, default: int | None = None) -> int:
    value = header.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"agent event field {key!r} is not an integer")
    return value


def parse_exit(header: dict[str, Any]) -> CommandExit:
    code = header.get(wire.Exit.CODE)
    sig = header.get(wire.Exit.SIGNAL)
    totals = header.get(wire.Exit.TOTALS)
    if code is not None and not isinstance(code, int):
        raise ValueError("agent exit code is not an integer")
    if sig is not None and not isinstance(sig, int):
        raise ValueError("agent exit signal is not an integer")
    if not (isinstance(totals, list) and len(totals) == 2 and all(isinstance(t, int) for t in totals)):
        raise ValueError("agent exit totals malformed")
    reason = header.get(wire.Exit.REASON)
    if reason not in wire.REASONS:
        raise ValueError("agent exit reason unknown")
    return CommandExit(
        code=code,
        signal=sig,
        reason=reason,
        wall_ms=event_int(header, wire.Exit.WALL_MS, 0),
        cpu_ms=event_int(header, wire.Exit.CPU_MS, 0),
        peak_rss_kb=event_int(header, wire.Exit.PEAK_RSS_KB, 0),
        stdout_total=totals[0],
        stderr_total=totals[1],
    )
