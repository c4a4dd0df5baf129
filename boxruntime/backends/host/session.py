"""One host-backend session's own things on the host: its private root, the environment its
commands get, its agent process, and the last resort for a tree whose agent does not stop.

The root (``<data>/sessions/<instance>/<key>``) holds ``home/`` and ``tmp/`` (HOME and TMPDIR
of every command, /tmp in the path map) and ``agent/`` (the agent's socket). The workspace is
the session's private workspace (``<data>/workspaces/<key>/files``, as on every backend, so a
later daemon finds its files) or the realpath of ``host_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from boxruntime.backends.common import host_mounts
from boxruntime.backends.host.paths import PathMap
from boxruntime.security import ResolvedMount

# The only variables a command inherits from the daemon (LangBot's list): never its tokens,
# cloud keys or anything else it was started with.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM")
WORKSPACE_ENV = "LANGBOT_BOX_WORKSPACE"


def inherited_env(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the session's agent runs with, and every command starts from."""
    source = os.environ if source is None else source
    env = {key: source[key] for key in INHERITED_ENV if key in source}
    env.setdefault("PATH", os.defpath)
    return env


@dataclass
class HostSession:
    root: Path
    home: Path
    tmp: Path
    workspace: ResolvedMount
    extras: tuple[ResolvedMount, ...]
    paths: PathMap
    process: asyncio.subprocess.Process | None = None

    @classmethod
    def create(cls, root: Path, workspace: ResolvedMount, extras: Sequence[ResolvedMount]) -> HostSession:
        home, tmp = root / "home", root / "tmp"
        paths = PathMap.build(workspace, str(tmp), extras)  # refuses a bad mount before anything is made
        for directory in (home, tmp):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        return cls(root, home, tmp, workspace, tuple(extras), paths)

    def remap(self, workspace: ResolvedMount, extras: Sequence[ResolvedMount]) -> None:
        """Other mounts for a live session (a pooled one handed out, extra mounts changed)."""
        self.paths = PathMap.build(workspace, str(self.tmp), extras)
        self.workspace, self.extras = workspace, tuple(extras)

    def command_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """What a command adds to the inherited environment: its home, its temp directory and
        the workspace, as LangBot's host backend sets them, then the request's own variables."""
        return {
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            WORKSPACE_ENV: os.path.realpath(self.workspace.host_path),
            **env,
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def descendants(root: int) -> list[int]:
    """Pids below ``root`` in the process tree, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(raw[raw.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def kill_tree(agent_pid: int, rounds: int = 20) -> None:
    """SIGKILL everything below an agent that did not stop by itself, then the agent. While the
    agent lives it is their subreaper, so what a killed process leaves behind is found again
    on the next round instead of escaping to the host's init."""
    for _ in range(rounds):
        pids = descendants(agent_pid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(agent_pid, signal.SIGKILL)


def make_removable(root: Path) -> None:
    """Give back to their owner (us) the directories a command made unwritable or unreadable
    below ``root``, so it can be deleted. Root needs none of it. Symlinks are never followed,
    so nothing outside ``root`` is touched."""
    if os.geteuid() == 0 or not root.exists():
        return
    for directory, subdirs, _ in os.walk(root):
        for name in subdirs:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, os.stat(path).st_mode | stat.S_IRWXU)


def remove_root(root: Path) -> None:
    """Delete a session's root, whatever permissions its commands left on what they made."""
    make_removable(root)
    # As root a command could have mounted something in there: unmounted first, never emptied.
    host_mounts.remove_tree(root)
