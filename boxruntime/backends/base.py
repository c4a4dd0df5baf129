"""The one small interface every sandbox backend implements.

Backends hold no session registry (the runtime does); they turn a checked spec into a running
sandbox and back. Backends whose sandboxes run the in-sandbox agent share ``AgentSandbox``.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from boxruntime.backends.agent.client import AgentClient, AgentProcess
from boxruntime.backends.agent.commands import CommandExit, CommandRequest, CompletedCommand, Output
from boxruntime.backends.agent.fd_passing import HandedPipes
from boxruntime.backends.agent.watch import AgentWatch
from boxruntime.backends.common import host_mounts
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.common.workspace import WorkspacePlan
from boxruntime.backends.common.workspace_acl import WorkspaceAcl, before_command
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxSessionConflictError
from boxruntime.instance import instance_alive
from boxruntime.models import BackendInfo, BoxSpec

AGENT_SOURCES = Path(__file__).parent / "agent" / "sandbox"
AGENT_DIR_OF_SCRIPTS = "/opt/boxruntime"
AGENT_PATH_IN_SANDBOX = f"{AGENT_DIR_OF_SCRIPTS}/boxagent.py"
AGENT_DIR_IN_SANDBOX = "/run/boxruntime"
SANDBOX_HOME = "/tmp"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class SandboxHandle:
    """A running sandbox as the runtime sees it."""

    backend: str
    sandbox_id: str  # container name, jail directory, E2B sandbox id ...
    key: str  # the sanitised session key
    agent: AgentClient | None = None
    resolved_image: str | None = None
    workspace_quota_enforced: bool | None = None
    notes: list[str] = field(default_factory=list)
    private_workspace: Path | None = None
    workspace_acl: WorkspaceAcl | None = None  # see workspace_acl: refreshed before each command
    state_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def adopt_workspace(self, plan: WorkspacePlan) -> None:
        self.private_workspace = plan.private
        self.close_workspace_acl()
        self.workspace_acl = plan.acl
        self.workspace_quota_enforced = plan.quota_enforced
        self.notes.extend(plan.notes)

    def close_workspace_acl(self) -> None:
        if self.workspace_acl is not None:
            self.workspace_acl.close()
            self.workspace_acl = None


@dataclass(frozen=True, slots=True)
class ExecRequest:
    script: str
    workdir: str
    env: dict[str, str]
    timeout: float
    output_cap: int


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """A command's environment in the sandbox: what every command gets, then its own."""
    return {"HOME": SANDBOX_HOME, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8", **env}


def agent_command(req: ExecRequest) -> CommandRequest:
    """What a sandbox's agent is asked to run for an exec."""
    return CommandRequest(
        cwd=req.workdir, env=sandbox_env(req.env), script=req.script, timeout=req.timeout, output_cap=req.output_cap
    )


class Backend(abc.ABC):
    name: str

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.settings = settings
        self.instance_id = instance_id

    @abc.abstractmethod
    async def probe(self) -> BackendInfo:
        """Is this backend usable here, and if not, why (and what to install)."""

    def check_spec(self, spec: BoxSpec) -> None:  # noqa: B027 - most backends can serve any spec
        """Refuse, with a BoxValidationError saying why, a spec this backend cannot honour, before
        any sandbox (pooled or new) is handed out for it."""

    @abc.abstractmethod
    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> SandboxHandle:
        """Create and start a sandbox for ``spec``; mounts were already checked by the caller.

        ``pooled``: made ahead of time by the warm pool, to be handed out with ``adopt``.
        """

    @abc.abstractmethod
    async def exec(self, handle: SandboxHandle, req: ExecRequest) -> CompletedCommand: ...

    @abc.abstractmethod
    def exec_stream(self, handle: SandboxHandle, req: ExecRequest) -> AsyncIterator[Output | CommandExit]: ...

    @abc.abstractmethod
    async def stop(self, handle: SandboxHandle, keep_workspace: bool = False) -> None:
        """Remove the sandbox (and, unless ``keep_workspace``, its private workspace).

        Never raises for a sandbox that is already gone.
        """

    @abc.abstractmethod
    async def alive(self, handle: SandboxHandle) -> bool: ...

    def known_alive(self, handle: SandboxHandle) -> bool:
        """Alive, as far as can be told without waiting for anything; False means "ask alive()"."""
        return False

    async def spawn(self, handle: SandboxHandle, req: CommandRequest) -> AgentProcess:
        """Start a long-lived process; ``req.env`` is its own environment, to which the backend
        adds what every command in its sandboxes gets (``sandbox_env`` in a sandbox)."""
        raise BoxSandboxError(f"{self.name} backend does not support managed processes")

    async def take_pipes(self, handle: SandboxHandle, proc: AgentProcess) -> HandedPipes:
        """The stdio pipes of a process spawned with ``handoff``, now the daemon's."""
        raise BoxSandboxError(f"{self.name} backend does not support managed processes")

    async def file_op(
        self, handle: SandboxHandle, op: str, fields: dict[str, Any], body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        """One file operation inside the sandbox (read, write, list, stat, remove)."""
        raise BoxSandboxError(f"{self.name} backend does not support file operations")

    async def watch(self, handle: SandboxHandle, fields: dict[str, Any]) -> AgentWatch:
        """Watch a directory inside the sandbox (``path``, ``recursive``, ``roots``)."""
        raise BoxSandboxError(f"{self.name} backend does not support watching files")

    async def extend_mounts(self, handle: SandboxHandle, current: BoxSpec, requested: BoxSpec) -> BoxSpec:
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

    def adopt(self, handle: SandboxHandle, spec: BoxSpec, key: str) -> bool:
        """Make a pooled sandbox the sandbox of session ``key``; False if it cannot be."""
        if handle.private_workspace is None:
            handle.key = key
            return True
        moved = workspaces.adopt(self.settings.data_dir, handle.key, key, spec)
        if moved is None:
            return False
        handle.key = key
        handle.private_workspace = moved
        return True

    async def cleanup_orphans(self) -> list[str]:
        """Remove sandboxes left by dead daemons of this data dir; returns their ids."""
        return []

    async def remove_own(self) -> list[str]:
        """Remove every sandbox of this daemon instance, registered or not (at exit)."""
        return []

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release backend resources after every sandbox was stopped."""


def installed_agent(data_dir: Path) -> Path:
    """The agent's scripts, copied into the data dir so sandboxes can mount them from there.

    A containerised daemon shares its data dir with the engine at the same path; its own
    package directory is not visible to the engine, so the mount source must live here. The
    directory name carries a digest of the scripts: a new version never mixes with an old one.
    """
    sources = sorted(AGENT_SOURCES.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:12]
    target = data_dir / "agent" / digest
    if not target.exists():
        staging = data_dir / "agent" / f".{digest}.{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        for source in sources:
            (staging / source.name).write_bytes(source.read_bytes())
            (staging / source.name).chmod(0o644)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another daemon installed the same version first
            shutil.rmtree(staging, ignore_errors=True)
    return target


class AgentSandbox(Backend):
    """Shared behaviour of backends whose sandboxes run the agent (Docker, nsjail)."""

    def state_dir(self, key: str) -> Path:
        """Per-session host state of this daemon instance (agent socket dir, jail files)."""
        return self.settings.data_dir / "sessions" / self.instance_id / key

    def agent_dir(self, handle: SandboxHandle, uid: int, gid: int) -> Path:
        """The agent's socket directory, handed to the sandbox user and nobody else."""
        assert handle.state_dir is not None
        directory = handle.state_dir / "agent"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            os.chown(directory, uid, gid)
            directory.chmod(0o700)
        except PermissionError:
            directory.chmod(0o777)
        return directory

    @staticmethod
    def seal_agent_dir(directory: Path) -> None:
        """Once the agent listens, take its directory back: the sandbox keeps the socket but can
        no longer write next to it (the only writable places left are workspace and /tmp)."""
        if os.geteuid() == 0:
            os.chown(directory, 0, 0)
            directory.chmod(0o755)

    def remove_dead_instances_state(self) -> list[str]:
        """Session state left by daemons of this data dir that are no longer running."""
        root = self.settings.data_dir / "sessions"
        removed = []
        for directory in root.iterdir() if root.is_dir() else []:
            if directory.name != self.instance_id and not instance_alive(self.settings.data_dir, directory.name):
                for session in directory.iterdir():
                    # Its loop-mounted workspaces stay mounted after a crash; the files are kept.
                    workspaces.release(self.settings.data_dir, session.name, remove=False)
                host_mounts.remove_tree(directory)
                removed.append(directory.name)
        return removed

    def agent_of(self, handle: SandboxHandle) -> AgentClient:
        if handle.agent is None:
            raise BoxSandboxError(
                f"sandbox {handle.sandbox_id} has no agent (its image has no python3): "
                "file operations and managed processes need python3 in the image"
            )
        return handle.agent

    def exec_command(self, handle: SandboxHandle, req: ExecRequest) -> CommandRequest:
        """What the agent is asked to run for an exec (the host backend translates paths here)."""
        return agent_command(req)

    def process_command(self, handle: SandboxHandle, req: CommandRequest) -> CommandRequest:
        """What the agent is asked to run for a long-lived process: the sandbox's base
        environment under the process's own."""
        return replace(req, env=sandbox_env(req.env))

    async def exec(self, handle: SandboxHandle, req: ExecRequest) -> CompletedCommand:
        agent = self.agent_of(handle)
        command = self.exec_command(handle, req)
        await self._ensure_connected(handle, agent)
        await before_command(handle.workspace_acl, req.workdir)
        return await agent.run(command)

    async def exec_stream(self, handle: SandboxHandle, req: ExecRequest) -> AsyncIterator[Output | CommandExit]:
        agent = self.agent_of(handle)
        command = self.exec_command(handle, req)
        await self._ensure_connected(handle, agent)
        await before_command(handle.workspace_acl, req.workdir)
        proc = await agent.spawn(command)
        finished = False
        try:
            async for event in proc.events():
                yield event
            finished = True
        finally:
            if not finished:
                with contextlib.suppress(BoxSandboxError):
                    proc.kill_soon()

    async def spawn(self, handle: SandboxHandle, req: CommandRequest) -> AgentProcess:
        agent = self.agent_of(handle)
        command = self.process_command(handle, req)
        await self._ensure_connected(handle, agent)
        await before_command(handle.workspace_acl, req.cwd)
        return await agent.spawn(command)

    async def take_pipes(self, handle: SandboxHandle, proc: AgentProcess) -> HandedPipes:
        return await self.agent_of(handle).take_fds(proc)

    async def file_op(
        self, handle: SandboxHandle, op: str, fields: dict[str, Any], body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        agent = self.agent_of(handle)
        await self._ensure_connected(handle, agent)
        if isinstance(path := fields.get("path"), str):
            await before_command(handle.workspace_acl, path)
        return await agent.request("fs", {**fields, "fs": op}, body)

    async def watch(self, handle: SandboxHandle, fields: dict[str, Any]) -> AgentWatch:
        agent = self.agent_of(handle)
        await self._ensure_connected(handle, agent)
        return await agent.watch(fields)

    async def _ensure_connected(self, handle: SandboxHandle, agent: AgentClient) -> None:
        if not agent.connected:
            # A lost connection is re-established; the sandbox and its processes live on.
            await agent.connect(timeout=5.0)

    def known_alive(self, handle: SandboxHandle) -> bool:
        return handle.agent is not None and handle.agent.connected

    async def alive(self, handle: SandboxHandle) -> bool:
        """A connected agent is alive: its socket reaches EOF the moment the agent or the whole
        sandbox dies, so no round trip is needed on the exec path. A lost connection is tried
        again, and the agent must then answer a ping."""
        agent = handle.agent
        if agent is None:
            return False
        if agent.connected:
            return True
        try:
            await agent.connect(timeout=5.0)
            await agent.ping(timeout=5.0)
            return True
        except (BoxSandboxError, TimeoutError, OSError):
            return False
