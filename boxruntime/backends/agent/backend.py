"""The sandboxes that run the in-sandbox agent (Docker with runc or gVisor, nsjail, host): the
contract's commands and files, done by the agent over its socket.

Everything about the agent — its requests, its replies, the hand-over of a process's pipes — is
in here and below; the runtime sees only the contract's types.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from boxruntime.backends.agent import files as agent_files
from boxruntime.backends.agent import takeover
from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.agent.commands import CommandRequest
from boxruntime.backends.agent.pipes import ProcessPipes
from boxruntime.backends.agent.process import AgentCommand
from boxruntime.backends.agent.sandbox import boxagent_wire as wire
from boxruntime.backends.common import host_mounts
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.common.workspace import WorkspacePlan
from boxruntime.backends.common.workspace_acl import WorkspaceAcl, before_command
from boxruntime.backends.contract import (
    SANDBOX_PATH,
    Backend,
    Command,
    CompletedCommand,
    FileChunk,
    FileInfo,
    FileWritten,
    Listing,
    Process,
    Removed,
    SandboxHandle,
    SandboxUsage,
    Watch,
)
from boxruntime.backends.contract import state_dir as session_state_dir
from boxruntime.errors import BoxError, BoxSandboxError
from boxruntime.instance import instance_alive
from boxruntime.models import BoxSpec
from boxruntime.security import resolve_mounts

log = logging.getLogger(__name__)

AGENT_SOURCES = Path(__file__).parent / "sandbox"
AGENT_DIR_OF_SCRIPTS = "/opt/boxruntime"
AGENT_PATH_IN_SANDBOX = f"{AGENT_DIR_OF_SCRIPTS}/boxagent.py"
AGENT_DIR_IN_SANDBOX = "/run/boxruntime"
SANDBOX_HOME = "/tmp"


@dataclass(kw_only=True)
class AgentHandle(SandboxHandle):
    """A sandbox whose commands its agent runs."""

    agent: AgentClient | None = None
    private_workspace: Path | None = None
    workspace_acl: WorkspaceAcl | None = None  # see workspace_acl: refreshed before each command
    state_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

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


AH = TypeVar("AH", bound=AgentHandle)


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """A command's environment in the sandbox: what every command gets, then its own."""
    return {"HOME": SANDBOX_HOME, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8", **env}


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


class AgentBackend(Backend[AH]):
    """Shared behaviour of the backends whose sandboxes run the agent."""

    # The agent can pass a process's pipes to the daemon (SCM_RIGHTS across the socket). Where it
    # cannot (gVisor: the pipes live in its kernel), the daemon's own sockets become the stdio of
    # a process it will hold (AgentClient(pass_fds=False)); a terminal then stays with the agent.
    passes_fds = True
    # On a timeout: SIGTERM, then SIGKILL this much later (None: SIGKILL at once).
    kill_grace: float | None = None

    # ── host-side state ──────────────────────────────────────────────────

    def state_dir(self, key: str) -> Path:
        """Per-session host state of this daemon instance (agent socket dir, jail files)."""
        return session_state_dir(self.settings, self.instance_id, key)

    def agent_dir(self, handle: AgentHandle, uid: int, gid: int) -> Path:
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

    async def sweep_workspaces(self, ttl_sec: float) -> list[str]:
        return await anyio.to_thread.run_sync(workspaces.sweep, self.settings.data_dir, ttl_sec)

    def adopt(self, handle: AH, spec: BoxSpec, key: str) -> bool:
        if handle.private_workspace is None:
            handle.key = key
            return True
        moved = workspaces.adopt(self.settings.data_dir, handle.key, key, spec)
        if moved is None:
            return False
        handle.key = key
        handle.private_workspace = moved
        return True

    # ── a successor's take-over (re-adoption) ────────────────────────────

    def describe(self, handle: AH) -> dict[str, Any]:
        return {"sandbox_id": handle.sandbox_id, "state_dir": str(handle.state_dir) if handle.state_dir else None}

    def claim_state(self, described: Mapping[str, Any]) -> Path | None:
        """Move a dead daemon's host state of a sandbox under this instance (agent/takeover.py)."""
        return takeover.claim_state(described, self.state_dir)

    def replan_workspace(self, handle: AH, spec: BoxSpec, key: str) -> None:
        """The workspace of a recovered sandbox, found again as ``start`` made it: held (its
        lease) and granted (a host directory's ACL) by this daemon now. BoxValidationError when
        this daemon's settings no longer allow the session's mounts."""
        workspace_mount, _ = resolve_mounts(spec, self.settings.mount_roots())
        uid, gid = workspaces.sandbox_identity(self.settings, workspace_mount, handle.notes)
        handle.adopt_workspace(workspaces.plan(self.settings.data_dir, spec, key, workspace_mount, uid, gid))

    async def reconnect_agent(self, handle: AH) -> bool:
        """Connect to a recovered sandbox's agent through its (moved) socket directory."""
        assert handle.state_dir is not None
        handle.agent = await takeover.reconnect(handle.state_dir / "agent", handle.sandbox_id, self.passes_fds)
        return handle.agent is not None

    async def finish_recovery(self, handle: AH, spec: BoxSpec, key: str, agent: bool = True) -> bool:
        """The common end of ``recover``: the workspace, then the agent (unless the sandbox runs
        without one). False: the sandbox cannot be used (the caller removes it)."""
        try:
            self.replan_workspace(handle, spec, key)
        except BoxError as exc:
            log.warning("sandbox %s: its workspace cannot be taken over: %s", handle.sandbox_id, exc)
            return False
        return await self.reconnect_agent(handle) if agent else True

    def process_ref(self, process: Process) -> str | None:
        if isinstance(process, AgentCommand) and process.kept:
            return process.ref
        return None

    async def recover_process(self, handle: AH, ref: str, pid: int | None) -> Process | None:
        return await takeover.adopt_process(await self.connected_agent(handle), ref, pid)

    async def end_strays(self, handle: AH, known: Collection[str]) -> list[str]:
        return await takeover.end_strays(await self.connected_agent(handle), known)

    async def release(self, handle: AH) -> None:
        if handle.agent is not None:
            await handle.agent.close()  # the agent ends commands in flight; kept processes stay
        handle.close_workspace_acl()
        if handle.private_workspace is not None:
            # Its lease ends with this daemon; count the handover as a use, so no sweeper takes
            # the workspace before the successor holds it again.
            with contextlib.suppress(OSError):
                os.utime(handle.private_workspace.parent)

    # ── the agent ────────────────────────────────────────────────────────

    def agent_of(self, handle: AH) -> AgentClient:
        if handle.agent is None:
            raise BoxSandboxError(
                f"sandbox {handle.sandbox_id} has no agent (its image has no python3): "
                "file operations and managed processes need python3 in the image"
            )
        return handle.agent

    async def connected_agent(self, handle: AH) -> AgentClient:
        agent = self.agent_of(handle)
        if not agent.connected:
            # A lost connection is re-established; the sandbox and its processes live on.
            await agent.connect(timeout=5.0)
        return agent

    def known_alive(self, handle: AH) -> bool:
        return handle.agent is not None and handle.agent.connected

    async def alive(self, handle: AH) -> bool:
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

    # ── commands ─────────────────────────────────────────────────────────

    def for_agent(self, handle: AH, command: Command) -> Command:
        """The command as the agent must run it (the host backend maps paths here)."""
        return command

    def command_env(self, handle: AH, env: Mapping[str, str]) -> dict[str, str]:
        """A command's whole environment: what every command of the sandbox gets, then its own."""
        return sandbox_env(env)

    def request(
        self, handle: AH, command: Command, *, piped: bool, lasting: bool, started: bool = True
    ) -> CommandRequest:
        """The agent's request for ``command``."""
        command = self.for_agent(handle, command)
        env = self.command_env(handle, command.env)
        terminal = command.terminal
        if terminal is not None:
            env.setdefault("TERM", "xterm")  # a terminal of some kind, as a login would say
        return CommandRequest(
            cwd=command.cwd,
            env=env,
            script=command.script,
            argv=list(command.argv) if command.argv is not None else None,
            timeout=command.timeout,
            output_cap=command.output_cap,
            stdin=command.stdin or terminal is not None,
            # A terminal handed over with the pipes (pty), or kept by the agent (tty).
            pty=(terminal.cols, terminal.rows) if terminal is not None and piped else None,
            tty=(terminal.rows, terminal.cols) if terminal is not None and not piped else None,
            keep_on_disconnect=lasting and piped,
            notify_started=started,
            handoff=piped,
            kill_grace=self.kill_grace,
            make_cwd=command.make_cwd,
        )

    async def run(self, handle: AH, command: Command) -> CompletedCommand:
        agent = await self.connected_agent(handle)
        await before_command(handle.workspace_acl, command.cwd)
        request = self.request(handle, command, piped=False, lasting=False, started=False)
        return await agent.run(request)

    async def start_command(self, handle: AH, command: Command, *, lasting: bool = False) -> Process:
        agent = await self.connected_agent(handle)
        await before_command(handle.workspace_acl, command.cwd)
        wants_input = command.stdin or command.terminal is not None
        # The daemon holds the stdio of what lasts or takes input, unless it is a terminal that
        # cannot be handed over.
        piped = (lasting or wants_input) and (self.passes_fds or command.terminal is None)
        proc = await agent.spawn(self.request(handle, command, piped=piped, lasting=lasting))
        process = AgentCommand(proc, piped=piped)
        if piped:
            try:
                await proc.started()
                handed = await agent.take_fds(proc)
                process.use_pipes(await ProcessPipes.open(handed, process.on_pipe_data))
            except BaseException:
                process.cancel()
                await process.close()
                raise
        return process

    # ── files ────────────────────────────────────────────────────────────

    def host_path_of(self, handle: AH, path: str) -> str:
        """Where a sandbox path is for the agent (the host backend maps paths here)."""
        return path

    def roots_of(self, handle: AH, roots: Sequence[str]) -> list[str]:
        return [self.host_path_of(handle, root) for root in roots]

    async def fs_request(
        self, handle: AH, op: str, path: str, roots: Sequence[str], fields: dict[str, Any], body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        """One file operation by the agent: ``path`` and ``roots`` as the sandbox names them."""
        agent = await self.connected_agent(handle)
        await before_command(handle.workspace_acl, path)
        request = {**fields, wire.Fs.PATH: self.host_path_of(handle, path), wire.Fs.ROOTS: self.roots_of(handle, roots)}
        return await agent_files.request(agent, op, request, body)

    async def read_file(self, handle: AH, path: str, roots: Sequence[str], offset: int, length: int) -> FileChunk:
        reply, data = await self.fs_request(
            handle, wire.FsOp.READ, path, roots, {wire.Fs.OFFSET: offset, wire.Fs.LENGTH: length}
        )
        return agent_files.chunk(reply, data, path)

    async def write_file(
        self,
        handle: AH,
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
        fields: dict[str, Any] = {
            wire.Fs.MODE: mode,
            wire.Fs.APPEND: append,
            wire.Fs.OFFSET: offset,
            wire.Fs.MAKE_PARENTS: make_parents,
        }
        if own:
            fields[wire.Fs.OWN] = True
        reply, _ = await self.fs_request(handle, wire.FsOp.WRITE, path, roots, fields, data)
        return agent_files.written(reply, path)

    async def list_dir(
        self,
        handle: AH,
        path: str,
        roots: Sequence[str],
        *,
        recursive: bool = False,
        max_depth: int = 0,
        max_entries: int = 1000,
        include_hidden: bool = True,
    ) -> Listing:
        fields = {
            wire.Fs.RECURSIVE: recursive,
            wire.Fs.MAX_DEPTH: max_depth,
            wire.Fs.MAX_ENTRIES: max_entries,
            wire.Fs.INCLUDE_HIDDEN: include_hidden,
        }
        reply, _ = await self.fs_request(handle, wire.FsOp.LIST, path, roots, fields)
        return agent_files.listing(reply, path)

    async def stat(self, handle: AH, path: str, roots: Sequence[str]) -> FileInfo:
        reply, _ = await self.fs_request(handle, wire.FsOp.STAT, path, roots, {})
        return agent_files.info(reply, path)

    async def remove(self, handle: AH, path: str, roots: Sequence[str], *, recursive: bool = False) -> Removed:
        reply, _ = await self.fs_request(handle, wire.FsOp.REMOVE, path, roots, {wire.Fs.RECURSIVE: recursive})
        return agent_files.removed(reply, path)

    async def make_dir(self, handle: AH, path: str, roots: Sequence[str]) -> FileInfo:
        reply, _ = await self.fs_request(handle, wire.FsOp.MKDIR, path, roots, {})
        return agent_files.info(reply, path)

    async def move(self, handle: AH, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        fields = {wire.Fs.DESTINATION: self.host_path_of(handle, destination)}
        reply, _ = await self.fs_request(handle, wire.FsOp.MOVE, source, roots, fields)
        return agent_files.info(reply, destination)

    async def watch(self, handle: AH, path: str, roots: Sequence[str], *, recursive: bool = False) -> Watch:
        agent = await self.connected_agent(handle)
        fields = {
            wire.Watch.PATH: self.host_path_of(handle, path),
            wire.Watch.RECURSIVE: recursive,
            wire.Watch.ROOTS: self.roots_of(handle, roots),
        }
        return await agent_files.watch(agent, fields)

    async def usage(self, handle: AH, disk_path: str) -> SandboxUsage:
        agent = await self.connected_agent(handle)
        reply, _ = await agent_files.request(
            agent, wire.FsOp.USAGE, {wire.Fs.PATH: self.host_path_of(handle, disk_path)}
        )
        return agent_files.usage(reply)
