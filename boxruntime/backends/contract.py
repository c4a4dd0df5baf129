"""The backend contract: what the runtime asks of any sandbox backend, in the runtime's words.

The runtime imports only this module from ``boxruntime.backends`` (and ``selection`` to get a
backend). Nothing here knows how a backend does its work: the in-sandbox agent, its socket and
its fd hand-over are one implementation below the contract (``backends/agent``), which Docker,
gVisor, nsjail and host share; a backend without the agent (E2B, a remote runtime) implements
the same methods its own way.

- A **sandbox** is started from a checked ``BoxSpec`` and stopped again; each backend keeps
  what it needs about one in its own typed ``SandboxHandle`` subclass.
- A **command** (``Command``) runs to completion (``run``: its output collected) or is started
  (``start``: a ``Process`` whose output and end come as events, which can be fed stdin,
  resized and signalled). A lasting process outlives the runtime's connection to the sandbox.
- **Files** are read, written, listed, moved and watched by path inside the sandbox, confined
  to the roots the runtime names; answers are the protocol's file models.
- A sandbox may **outlive its daemon** (``survives_daemon``): the runtime keeps what
  ``describe`` says of it in the data dir, and a successor daemon takes it over with
  ``recover`` (and its lasting processes with ``recover_process``) after a crash or a
  handover (``release``). An idle sandbox may be **frozen** and thawed (``freeze``, ``thaw``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import pydantic

from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxSessionConflictError, BoxValidationError
from boxruntime.models import BackendInfo, BoxSpec

# ── commands ─────────────────────────────────────────────────────────────

# What every command in a sandbox finds on its PATH, whatever the backend.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class TerminalSize:
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class Command:
    """A command for a sandbox. ``script`` runs under ``/bin/sh``; ``argv`` runs directly.

    ``env`` is the command's own environment: the backend puts it over what every command in
    its sandboxes gets (HOME, PATH, LANG)."""

    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    script: str | None = None
    argv: Sequence[str] | None = None
    timeout: float | None = None  # seconds; the command's process tree is killed then
    output_cap: int | None = None  # bytes kept (run) or forwarded (start) per stream; None: all
    stdin: bool = False  # the command reads what ``Process.write`` sends (else /dev/null)
    terminal: TerminalSize | None = None  # run on a new pseudo-terminal of this size
    make_cwd: bool = True  # create a missing working directory (else the start fails, naming it)


@dataclass(frozen=True, slots=True)
class CommandExit:
    code: int | None
    signal: int | None
    reason: str  # exit | signal | timeout | oom | cancelled
    wall_ms: int
    cpu_ms: int | None  # None where the sandbox cannot measure it
    peak_rss_kb: int | None
    stdout_total: int
    stderr_total: int


@dataclass(slots=True)
class Output:
    stream: int  # 1 stdout, 2 stderr (a terminal's output is stdout)
    data: bytes


@dataclass(slots=True)
class CompletedCommand:
    exit: CommandExit
    stdout: bytes
    stderr: bytes


ProcessEvent = Output | CommandExit


class Process(Protocol):
    """A started command: its output as it comes, then its end; its stdin, terminal and signals."""

    @property
    def pid(self) -> int | None:
        """The process id inside the sandbox, once known."""
        ...

    async def started(self) -> int:
        """Wait until the process runs; its pid. BoxValidationError if it could not start."""
        ...

    def events(self) -> AsyncIterator[ProcessEvent]:
        """Output as it comes, ending with the CommandExit. BoxSandboxError if the sandbox (or
        the way to it) is lost before the end is known."""
        ...

    async def write(self, data: bytes, eof: bool = False) -> None:
        """Feed stdin (started with ``stdin``); returns once taken, so a slow reader slows the
        writer. ``eof`` closes stdin after ``data``."""
        ...

    async def resize(self, size: TerminalSize) -> None:
        """Resize the terminal (started with ``terminal``)."""
        ...

    async def signal(self, sig: int, *, until_gone: bool = False, cancel: bool = False) -> None:
        """Signal the command's process tree. With ``until_gone`` (SIGKILL), return only once
        it is gone: a caller that answers "killed" must not answer before. ``cancel``: the
        client ends the command on purpose, so an end by this signal is ``cancelled``, not
        ``signal``."""
        ...

    def cancel(self) -> None:
        """Kill the command without waiting (usable while the caller is being cancelled)."""
        ...

    async def close(self) -> None:
        """Release what the daemon holds for it (pipes); the command itself is not touched."""
        ...


# ── files ────────────────────────────────────────────────────────────────


class SandboxFileError(BoxValidationError):
    """A file operation the sandbox refused or failed; ``code`` is the errno name (ENOENT …).
    On the wire it is a BoxValidationError."""

    def __init__(self, message: str, code: str = "EIO") -> None:
        super().__init__(message)
        self.code = code


FileKind = Literal["file", "dir", "symlink", "other"]
WatchKind = Literal["create", "write", "remove", "rename", "chmod"]


class FileInfo(pydantic.BaseModel):
    """One file or directory as the sandbox sees it (``lstat``: a symlink is itself)."""

    path: str  # as asked (stat, make_dir, move), or relative to the listed directory (list_dir)
    name: str = ""
    exists: bool = True
    type: FileKind | None = None
    size: int = 0
    mode: int = 0  # permission bits
    mtime: float = 0.0
    uid: int = -1
    gid: int = -1
    owner: str = ""  # the names the sandbox's own user and group databases give
    group: str = ""
    target: str | None = None  # a symlink's contents
    resolved: str | None = None  # where a symlink leads, absolute (stat only)
    resolved_type: FileKind | None = None
    resolved_mode: int | None = None


@dataclass(frozen=True, slots=True)
class FileChunk:
    path: str
    size: int  # the whole file's
    offset: int
    data: bytes
    eof: bool
    mode: int
    mtime: float


@dataclass(frozen=True, slots=True)
class FileWritten:
    path: str
    size: int
    bytes_written: int
    mode: int


@dataclass(frozen=True, slots=True)
class Listing:
    path: str
    entries: list[FileInfo]
    truncated: bool  # more entries than asked for


@dataclass(frozen=True, slots=True)
class Removed:
    path: str
    type: FileKind


@dataclass(frozen=True, slots=True)
class SandboxUsage:
    cpu_sec: float  # used by every process of the sandbox since it started
    mem_bytes: int  # resident now
    disk_total: int | None = None  # the file system of the path asked about
    disk_used: int | None = None


@dataclass(frozen=True, slots=True)
class FileChange:
    name: str  # relative to the watched directory
    kind: WatchKind


class Watch(Protocol):
    """Changes under a watched directory, in order, until closed."""

    async def next_batch(self) -> list[FileChange]:
        """The next changes (waiting for them; cancelling the wait loses nothing)."""
        ...

    def pending(self) -> list[FileChange]:
        """Every change received and not yet taken, without waiting."""
        ...

    def close(self) -> None: ...


# ── sandboxes ────────────────────────────────────────────────────────────


@dataclass(kw_only=True)
class SandboxHandle:
    """A running sandbox as the runtime sees it. Backends subclass it for their own state."""

    backend: str
    sandbox_id: str  # container name, jail name, E2B sandbox id …
    key: str  # the sanitised session key
    resolved_image: str | None = None
    workspace_quota_enforced: bool | None = None
    notes: list[str] = field(default_factory=list)


H = TypeVar("H", bound=SandboxHandle)


class Backend(abc.ABC, Generic[H]):
    """One kind of sandbox. Holds no session registry (the runtime does)."""

    name: str

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id

    # lifecycle

    @abc.abstractmethod
    async def probe(self) -> BackendInfo:
        """Is this backend usable here, and if not, why (and what to install)."""

    def check_spec(self, spec: BoxSpec) -> None:
        """Refuse, with a BoxValidationError saying why, a spec this backend cannot honour, before
        any sandbox (pooled or new) is handed out for it."""

    @abc.abstractmethod
    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> H:
        """Create and start a sandbox for ``spec``; mounts were already checked by the caller.
        ``pooled``: made ahead of time by the warm pool, to be handed out with ``adopt``."""

    @abc.abstractmethod
    async def stop(self, handle: H, keep_workspace: bool = False) -> None:
        """Remove the sandbox (and, unless ``keep_workspace``, its private workspace). Never
        raises for a sandbox that is already gone."""

    @abc.abstractmethod
    async def alive(self, handle: H) -> bool: ...

    def known_alive(self, handle: H) -> bool:
        """Alive, as far as can be told without waiting for anything; False means "ask alive()"."""
        return False

    # commands

    @abc.abstractmethod
    async def run(self, handle: H, command: Command) -> CompletedCommand:
        """Run to completion; at most ``output_cap`` bytes of each stream are kept."""

    @abc.abstractmethod
    async def start_command(self, handle: H, command: Command, *, lasting: bool = False) -> Process:
        """Start ``command``. ``lasting``: a long-lived process (a managed process, a background
        command) that goes on if the daemon's link to the sandbox breaks and comes back."""

    # files: paths are absolute inside the sandbox and must stay under one of ``roots``; a
    # refusal or failure is a SandboxFileError whose ``code`` is the errno name (ENOENT …)

    async def read_file(self, handle: H, path: str, roots: Sequence[str], offset: int, length: int) -> FileChunk:
        raise self._unsupported("file operations")

    async def write_file(
        self,
        handle: H,
        path: str,
        roots: Sequence[str],
        data: bytes,
        *,
        mode: int | None = None,
        append: bool = False,
        offset: int | None = None,
        make_parents: bool = True,
        own: bool = False,
    ) -> FileWritten:
        """Write ``data``; ``own``: give the file to the sandbox's user afterwards."""
        raise self._unsupported("file operations")

    async def list_dir(
        self,
        handle: H,
        path: str,
        roots: Sequence[str],
        *,
        recursive: bool = False,
        max_depth: int = 0,  # with recursive: 0 = no limit
        max_entries: int = 1000,
        include_hidden: bool = True,
    ) -> Listing:
        raise self._unsupported("file operations")

    async def stat(self, handle: H, path: str, roots: Sequence[str]) -> FileInfo:
        """The entry at ``path`` (``exists`` False when there is none)."""
        raise self._unsupported("file operations")

    async def remove(self, handle: H, path: str, roots: Sequence[str], *, recursive: bool = False) -> Removed:
        raise self._unsupported("file operations")

    async def make_dir(self, handle: H, path: str, roots: Sequence[str]) -> FileInfo:
        """Create ``path`` and its parents (EEXIST if it is a directory already)."""
        raise self._unsupported("file operations")

    async def move(self, handle: H, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        raise self._unsupported("file operations")

    async def watch(self, handle: H, path: str, roots: Sequence[str], *, recursive: bool = False) -> Watch:
        raise self._unsupported("watching files")

    async def usage(self, handle: H, disk_path: str) -> SandboxUsage:
        """What the sandbox uses now (cpu, memory, and the file system of ``disk_path``)."""
        raise self._unsupported("usage figures")

    # mounts and the warm pool

    async def extend_mounts(self, handle: H, current: BoxSpec, requested: BoxSpec) -> BoxSpec:
        """A live session asked for other extra mounts: add what can be added and return the
        session's new spec, or refuse with a conflict that says why."""
        raise BoxSessionConflictError(
            f"Box session {current.session_id} already exists with a different set of extra_mounts: the "
            f"{self.name} backend cannot change the mounts of a running session; delete the session or "
            "request the mounts it was created with"
        )

    def swaps_workspace(self) -> bool:
        """Can a pooled sandbox take a session's host-directory workspace (``adopt``)?"""
        return False

    def adopt(self, handle: H, spec: BoxSpec, key: str) -> bool:
        """Make a pooled sandbox the sandbox of session ``key``; False if it cannot be."""
        handle.key = key
        return True

    # sandboxes that outlive their daemon (re-adoption: runtime/readopt.py)

    def survives_daemon(self) -> bool:
        """Do this backend's sandboxes, and their lasting processes, keep running when the daemon
        dies (a crash) or lets go of them (``release``), for a successor to ``recover``? False:
        they end with the daemon, and a successor starts afresh (keeping the workspaces)."""
        return False

    def describe(self, handle: H) -> dict[str, Any]:
        """What a successor daemon needs to find this sandbox again: JSON-able, kept in the
        session's record in the data dir (written when the session is made or changes)."""
        return {}

    async def recover(self, spec: BoxSpec, key: str, described: Mapping[str, Any]) -> H | None:
        """Take over a sandbox a dead daemon of this data dir left running, from what
        ``describe`` said of it; its session is ``spec``, keyed ``key``. A frozen sandbox comes
        back thawed. The runtime asks only about records it has claimed (moved under its own
        instance while holding the data dir's adoption lock), never about a live daemon's.
        None when the sandbox is gone or unusable, after removing what is left of it except
        its workspace."""
        return None

    def process_ref(self, process: Process) -> str | None:
        """How a successor finds a lasting process of this backend again (``recover_process``);
        None when it cannot."""
        return None

    async def recover_process(self, handle: H, ref: str, pid: int | None) -> Process | None:
        """A lasting process that the dead daemon started in a recovered sandbox, by its
        ``process_ref``: what it wrote since that daemon last read comes first in its events,
        then its output as usual (its exit, if it ended meanwhile). None when it is gone."""
        return None

    async def end_strays(self, handle: H, known: Collection[str]) -> list[str]:
        """End the lasting processes of a recovered sandbox whose refs are not ``known`` (no
        record names them: nobody can reach them any more); returns their refs."""
        return []

    async def release(self, handle: H) -> None:
        """Let go of a sandbox without stopping it (a handover to a successor): close what the
        daemon holds for it; the sandbox and its lasting processes run on."""

    # idle suspend

    def can_freeze(self) -> bool:
        """Can a sandbox of this backend be frozen (every process stopped, none of its state
        lost) and thawed again?"""
        return False

    async def freeze(self, handle: H) -> None:
        """Stop every process of the sandbox until ``thaw``; they use no CPU meanwhile."""
        raise self._unsupported("freezing sandboxes")

    async def thaw(self, handle: H) -> None:
        """Let a frozen sandbox's processes run again; a no-op for one that is not frozen."""
        raise self._unsupported("freezing sandboxes")

    # the backend as a whole

    async def upkeep(self) -> None:
        """Periodic work while this backend is selected (the runtime calls it about once a
        minute): a remote backend renews its sandboxes' leases here."""

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        """Remove sandboxes left by dead daemons of this data dir, except those whose ids are in
        ``spare`` (taken over by a live daemon); returns their ids."""
        return []

    async def sweep_workspaces(self, ttl_sec: float) -> list[str]:
        """Remove kept workspaces no session has used for ``ttl_sec`` (not persistent ones)."""
        return []

    async def remove_own(self) -> list[str]:
        """Remove every sandbox of this daemon instance, registered or not (at exit)."""
        return []

    async def close(self) -> None:
        """Release backend resources after every sandbox was stopped."""

    def _unsupported(self, what: str) -> BoxSandboxError:
        return BoxSandboxError(f"the {self.name} backend does not support {what}")


def state_dir(settings: Settings, instance_id: str, key: str) -> Path:
    """Per-session host state of a daemon instance (agent socket dir, jail files)."""
    return settings.data_dir / "sessions" / instance_id / key
