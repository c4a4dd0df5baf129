"""``box_get_storage_analysis`` (reference §D.13): how much a LangBot workspace stores, on the host
(its tenant directory and the parts LangBot keeps there) and inside its sandboxes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio

from boxruntime.backends.contract import Command
from boxruntime.models import OUTPUT_CAP_BYTES, StorageAnalysis, StorageDirectory
from boxruntime.runtime.sessions import Session

PROBE_TIMEOUT_SEC = 15.0
# LangBot's probe, run in each sandbox of the workspace: "key<TAB>exists<TAB>KB<TAB>files" lines.
SANDBOX_PROBE = """
for item in 'session_workspaces|/workspace' 'session_caches|/root/.cache' 'session_temp|/tmp'; do
  key=${item%%|*}
  path=${item#*|}
  if [ -e "$path" ]; then
    set -- $(du -sk "$path" 2>/dev/null)
    kb=${1:-0}
    files=$(find "$path" -type f 2>/dev/null | wc -l)
    printf '%s\\t1\\t%s\\t%s\\n' "$key" "$kb" "$files"
  else
    printf '%s\\t0\\t0\\t0\\n' "$key"
  fi
done
""".strip()
SANDBOX_KEYS = {"session_workspaces": "/workspace", "session_caches": "/root/.cache", "session_temp": "/tmp"}


@dataclass
class _Tally:
    exists: bool = False
    size_bytes: int = 0
    file_count: int = 0

    def add(self, exists: bool, size_bytes: int, file_count: int) -> None:
        self.exists = self.exists or exists
        self.size_bytes += size_bytes
        self.file_count += file_count


def scan_host_directory(key: str, path: Path, kind: Literal["root", "detail"], parent: str | None) -> StorageDirectory:
    """Sizes and counts under ``path``, never following a symbolic link."""
    entry = StorageDirectory(key=key, path=str(path), kind=kind, parent_key=parent, scope="runtime_host")
    try:
        top = path.lstat()
    except FileNotFoundError:
        return entry
    except OSError:
        entry.error_count = 1
        return entry
    entry.exists = True
    if not stat.S_ISDIR(top.st_mode):
        entry.size_bytes, entry.file_count = top.st_size, 1
        return entry
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for item in entries:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        entry.error_count += 1
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(Path(item.path))
                    else:
                        entry.size_bytes += st.st_size
                        entry.file_count += 1
        except OSError:
            entry.error_count += 1
    return entry


def host_directories(workspace_dir: Path | None) -> list[StorageDirectory]:
    if workspace_dir is None:
        return []
    parts: list[tuple[str, Path, Literal["root", "detail"], str | None]] = [
        ("workspace", workspace_dir, "root", None),
        ("mcp", workspace_dir / ".mcp", "detail", "workspace"),
        ("inbox", workspace_dir / "inbox", "detail", "workspace"),
        ("outbox", workspace_dir / "outbox", "detail", "workspace"),
    ]
    return [scan_host_directory(*part) for part in parts]


def parse_probe(stdout: str) -> dict[str, tuple[bool, int, int]]:
    report: dict[str, tuple[bool, int, int]] = {}
    for line in stdout.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] not in SANDBOX_KEYS:
            continue
        try:
            report[fields[0]] = (fields[1] == "1", max(int(fields[2]), 0) * 1024, max(int(fields[3]), 0))
        except ValueError:
            continue
    return report


async def probe_session(session: Session) -> dict[str, tuple[bool, int, int]]:
    """Run the probe in one sandbox, without touching the session's idle clock."""
    command = Command(cwd="/", script=SANDBOX_PROBE, timeout=PROBE_TIMEOUT_SEC, output_cap=OUTPUT_CAP_BYTES)
    done = await session.backend.run(session.handle, command)
    if done.exit.code != 0:
        raise RuntimeError(done.stderr.decode(errors="replace") or "sandbox storage probe failed")
    return parse_probe(done.stdout.decode(errors="replace"))


def sandbox_directories(
    sessions: list[Session], reports: list[dict[str, tuple[bool, int, int]] | None]
) -> list[StorageDirectory]:
    """LangBot's aggregation: one root entry per probed path over all sessions (a host-mounted
    workspace is counted on the host, not here), and the managed-process sessions' workspaces."""
    if not sessions:
        return []
    totals = {key: _Tally() for key in SANDBOX_KEYS}
    managed = _Tally()
    errors = included = managed_sessions = 0
    for session, report in zip(sessions, reports, strict=True):
        if report is None:
            errors += 1
            continue
        included += 1
        host_mounted = session.spec.host_path is not None
        for key, tally in totals.items():
            if key == "session_workspaces" and host_mounted:
                continue
            tally.add(*report.get(key, (False, 0, 0)))
        if session.processes and not host_mounted:
            managed_sessions += 1
            managed.add(*report.get("session_workspaces", (False, 0, 0)))
    directories = [
        StorageDirectory(
            key=key,
            path=f"{SANDBOX_KEYS[key]} ({included} sandbox sessions)",
            kind="root",
            exists=tally.exists,
            size_bytes=tally.size_bytes,
            file_count=tally.file_count,
            error_count=errors,
            scope="sandbox_sessions",
        )
        for key, tally in totals.items()
    ]
    if managed_sessions:
        directories.append(
            StorageDirectory(
                key="managed_process_workspaces",
                path=f"/workspace ({managed_sessions} managed-process sessions)",
                kind="detail",
                parent_key="session_workspaces",
                exists=managed.exists,
                size_bytes=managed.size_bytes,
                file_count=managed.file_count,
                error_count=errors,
                scope="sandbox_sessions",
            )
        )
    return directories


async def analyse(workspace_dir: Path | None, sessions: list[Session]) -> StorageAnalysis:
    directories = await anyio.to_thread.run_sync(host_directories, workspace_dir)
    reports: list[dict[str, tuple[bool, int, int]] | None] = [None] * len(sessions)

    async def probe(index: int, session: Session) -> None:
        try:
            reports[index] = await probe_session(session)
        except Exception:  # counted as error_count, as LangBot does; the others still report
            reports[index] = None

    async with anyio.create_task_group() as tg:
        for index, session in enumerate(sessions):
            tg.start_soon(probe, index, session)
    directories += sandbox_directories(sessions, reports)
    return StorageAnalysis(
        size_bytes=sum(d.size_bytes for d in directories if d.kind == "root"),
        directories=directories,
        active_sessions=len(sessions),
        managed_processes=sum(len(s.processes) for s in sessions),
    )
