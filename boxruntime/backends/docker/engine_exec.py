"""Commands through the Docker Engine's own exec, for images without python3 (no agent).

The slow path LangBot always takes (one Engine-API exec per command, ~40 ms here), kept as a
transparent fallback. The wrapper makes the workdir or fails clearly without running anything,
and runs the command under ``timeout -s KILL`` (coreutils or busybox) so a timeout kills its
whole process group. Output is capped like the agent's; CPU and memory are not measured.
"""

from __future__ import annotations

import time

import docker

from boxruntime.backends.agent.backend import sandbox_env
from boxruntime.backends.contract import Command, CommandExit, CompletedCommand
from boxruntime.errors import BoxValidationError

# $1 workdir, $2 timeout in seconds, $3 the command.
WRAPPER = r"""
mkdir -p -- "$1" 2>/dev/null && cd -- "$1" || { echo "boxruntime: workdir $1 cannot be created" >&2; exit 125; }
if command -v timeout >/dev/null 2>&1; then exec timeout -s KILL "$2" /bin/sh -c "$3"; fi
exec /bin/sh -c "$3"
"""
WORKDIR_FAILED = 125
MAX_SCRIPT_BYTES = 100 * 1024  # passed as one argument: bounded by MAX_ARG_STRLEN (128 KiB)


def run(api: docker.APIClient, container_id: str, command: Command) -> CompletedCommand:
    if command.argv is not None or command.stdin or command.terminal is not None:
        raise BoxValidationError(
            "this image has no python3, so commands go through the Engine API, which runs shell "
            "commands only (no argv, stdin or terminal); use an image with python3"
        )
    script = command.script or ""
    timeout = command.timeout if command.timeout is not None else 24 * 3600.0
    cap = command.output_cap if command.output_cap is not None else 1 << 30
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        raise BoxValidationError(
            f"this image has no python3, so commands go through the Engine API, which limits them to "
            f"{MAX_SCRIPT_BYTES // 1024} KiB; use an image with python3 for longer ones"
        )
    argv = ["/bin/sh", "-c", WRAPPER, "sh", command.cwd, str(max(1, int(timeout + 0.999))), script]
    started = time.monotonic()
    exec_id = api.exec_create(container_id, argv, environment=sandbox_env(command.env))["Id"]
    kept: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    totals = {1: 0, 2: 0}
    for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
        for stream, data in ((1, stdout), (2, stderr)):
            if data:
                totals[stream] += len(data)
                room = cap - len(kept[stream])
                if room > 0:
                    kept[stream] += data[:room]
    wall = time.monotonic() - started
    code = api.exec_inspect(exec_id)["ExitCode"]
    if code == WORKDIR_FAILED and b"boxruntime: workdir" in kept[2]:
        raise BoxValidationError(kept[2].decode("utf-8", "replace").strip())
    timed_out = code in (124, 137) and wall >= timeout
    reason = "timeout" if timed_out else ("signal" if code is not None and code > 128 else "exit")
    exit = CommandExit(
        code=code,
        signal=code - 128 if code is not None and code > 128 else None,
        reason=reason,
        wall_ms=int(wall * 1000),
        cpu_ms=None,
        peak_rss_kb=None,
        stdout_total=totals[1],
        stderr_total=totals[2],
    )
    return CompletedCommand(exit, bytes(kept[1]), bytes(kept[2]))
