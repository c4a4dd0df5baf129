"""The host backend (reference §D.9): commands run directly on this machine, as the daemon's
user, with NO isolation. For machines where neither Docker nor nsjail can run (an
unprivileged container, a laptop); it needs neither root nor user namespaces. Never chosen by
``local``: only by name, and never behind a WebSocket without a token (config.host_refusal).

Each session runs the same in-sandbox agent that Docker and nsjail sandboxes run, as a plain
host process started with ``--host`` (boxagent_host): so exec with streaming, timeouts that
end a whole process group and session, file operations and managed processes whose pipes are
handed to the daemon all work exactly as on the other backends, through the same code. What
the agent cannot know — that /workspace is a host directory here — is translated on the way
in (host_paths): workdirs, cwds, file paths and the mount paths named in commands become host
paths. The agent is the subreaper of everything its commands start, and takes that whole tree
down when the session ends (or the daemon dies).

Not enforced: network, cpus, memory_mb, pids_limit, read-only mounts (for commands; file
operations refuse writes to them), a read-only root filesystem, and workspace quotas unless
the daemon is root (loop-mounted image). The session's notes and the backend info say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio

from boxruntime.backends.agent.backend import AgentBackend, AgentHandle, installed_agent
from boxruntime.backends.agent.client import AGENT_SOCKET_NAME, AgentClient, AgentOpError
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.common.parent_death import die_with_parent
from boxruntime.backends.contract import Command, FileInfo
from boxruntime.backends.host.session import HostSession, inherited_env, kill_tree, make_removable, remove_root
from boxruntime.errors import BoxSandboxError
from boxruntime.models import BackendInfo, BoxSpec
from boxruntime.security import ResolvedMount, prepare_host_dirs, resolve_mounts

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 20.0
TIMEOUT_KILL_GRACE_SEC = 2.0  # an exec past its timeout: SIGTERM, then SIGKILL this much later
# The agent's own stop takes its tree down in about 2 s (boxagent_host.STOP_GRACE_SEC).
AGENT_STOP_TIMEOUT = 8.0
SHELL = "/bin/sh"  # what the agent runs commands with
WRITING_OPS = ("write", "remove", "mkdir", "move")


def _user() -> str:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"{name} (uid {uid})"


def unsafe_note() -> str:
    return (
        f"UNSAFE host backend: commands run directly on this machine as {_user()}, with no isolation "
        "(no namespaces, no filesystem confinement, the host's network); network, cpus, memory_mb, "
        "pids_limit, read-only mounts and read_only_rootfs are not enforced"
    )


@dataclass(kw_only=True)
class HostSandbox(AgentHandle):
    session: HostSession | None = None  # its directories, path map and agent process


class HostBackend(AgentBackend[HostSandbox]):
    name = "host"
    kill_grace = TIMEOUT_KILL_GRACE_SEC
    _warned = False

    @staticmethod
    def _unavailable_reason() -> str | None:
        if os.name != "posix" or not os.access(SHELL, os.X_OK):
            return f"the host backend needs a POSIX system with {SHELL}"
        if not os.path.exists("/proc/self/stat"):
            return "the host backend needs /proc to find and end the processes of a session"
        return None

    async def probe(self) -> BackendInfo:
        reason = self._unavailable_reason()
        if reason is not None:
            return BackendInfo(name=self.name, available=False, reason=reason)
        quota = (
            "enforced for private workspaces (loop-mounted ext4, the daemon runs as root); not for host_path"
            if workspaces.loop_quota_supported()
            else "not enforced (a loop-mounted image needs root, mkfs.ext4 and loop devices)"
        )
        limits = {
            "isolation": f"NONE: commands run directly on the host as {_user()}, with that user's files, "
            "network and processes",
            "network": "not enforced (the host's network)",
            "cpus": "not enforced",
            "memory_mb": "not enforced",
            "pids_limit": "not enforced",
            "read_only_rootfs": "not enforced (the host's own filesystem)",
            "read-only mounts": "not enforced for commands; file operations refuse to write to them",
            "workspace_quota_mb": quota,
            "timeout": f"enforced: SIGTERM to the command's process group and session, SIGKILL "
            f"{TIMEOUT_KILL_GRACE_SEC:g} s later; the session is kept",
            "environment": "minimal: PATH, LANG, LC_ALL, LC_CTYPE, TERM from the daemon; HOME, TMPDIR "
            "and LANGBOT_BOX_WORKSPACE of the session",
        }
        return BackendInfo(
            name=self.name,
            available=True,
            unsafe_direct_execution=True,
            reason=unsafe_note(),
            enforced_limits=limits,
        )

    # ── sessions ─────────────────────────────────────────────────────────

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> HostSandbox:
        if (reason := self._unavailable_reason()) is not None:
            raise BoxSandboxError(reason)
        workspace_mount, extras = resolve_mounts(spec, self.settings.mount_roots())
        uid, gid = os.geteuid(), os.getegid()
        prepare_host_dirs([m for m in (workspace_mount, *extras) if m is not None], uid, gid)
        state = self.state_dir(key)
        handle = HostSandbox(backend=self.name, sandbox_id=f"host-{self.instance_id}-{key}", key=key, state_dir=state)
        handle.notes.append(unsafe_note())
        try:
            workspace = self._workspace(spec, key, workspace_mount, handle)
            session = HostSession.create(state, workspace, extras)
            handle.session = session
            await self._launch(handle, session)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(handle, keep_workspace=True)
            raise
        if not self._warned:  # once per backend: the same words for every session
            log.warning("%s", unsafe_note())
            self._warned = True
        handle.notes.append(f"image {spec.image} is not used: commands run with the host's own programs")
        return handle

    def _workspace(
        self, spec: BoxSpec, key: str, host_mount: ResolvedMount | None, handle: HostSandbox
    ) -> ResolvedMount:
        quota = spec.workspace_quota_mb
        if host_mount is not None:
            if quota > 0:
                handle.workspace_quota_enforced = False
                handle.notes.append(f"workspace_quota_mb={quota} is not enforced on host_path {host_mount.host_path}")
            return host_mount
        private = workspaces.prepare(self.settings.data_dir, spec, key, os.geteuid(), os.getegid())
        handle.private_workspace = private.path
        if quota > 0:
            handle.workspace_quota_enforced = private.quota_mechanism is not None
            handle.notes.append(
                f"workspace is a {quota} MB loop-mounted ext4 image (kernel-enforced)"
                if private.quota_mechanism
                else f"workspace_quota_mb={quota} is not enforced: the host backend needs root for a loop-mounted image"
            )
        return ResolvedMount(str(private.path), spec.mount_path, read_only=False)

    async def _launch(self, handle: HostSandbox, session: HostSession) -> None:
        agent_dir = self.agent_dir(handle, os.geteuid(), os.getegid())
        script = installed_agent(self.settings.data_dir) / "boxagent.py"
        with (session.root / "agent.log").open("ab") as log_file:
            # The socket is named relative to the agent's directory: its absolute path may be
            # longer than a unix socket address allows. The agent's environment is the minimal
            # one its commands start from: nothing else of the daemon's reaches them.
            session.process = await asyncio.create_subprocess_exec(
                sys.executable, "-s", "-E", str(script), "--host", AGENT_SOCKET_NAME,
                cwd=agent_dir,
                env=inherited_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        handle.agent = AgentClient(agent_dir, handle.sandbox_id)
        try:
            await handle.agent.connect(timeout=AGENT_START_TIMEOUT, alive=lambda: session.running)
        except BoxSandboxError as exc:
            tail = (session.root / "agent.log").read_text(errors="replace")[-500:].strip()
            raise BoxSandboxError(f"the host agent did not start: {tail or exc}") from exc

    @staticmethod
    def _session(handle: HostSandbox) -> HostSession:
        if handle.session is None:
            raise BoxSandboxError(f"host session {handle.sandbox_id} is not available")
        return handle.session

    async def stop(self, handle: HostSandbox, keep_workspace: bool = False) -> None:
        if handle.agent is not None:
            await handle.agent.close()
        process = handle.session.process if handle.session is not None else None
        if process is not None and process.returncode is None:
            # SIGTERM: the agent ends its whole tree (SIGTERM, SIGKILL after a grace), then exits.
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), AGENT_STOP_TIMEOUT)
            except TimeoutError:
                log.warning("host agent %s did not stop; killing its processes", handle.sandbox_id)
                await anyio.to_thread.run_sync(kill_tree, process.pid)
                await process.wait()
        if handle.private_workspace is not None:
            if not keep_workspace:
                await anyio.to_thread.run_sync(make_removable, handle.private_workspace)
            workspaces.release(self.settings.data_dir, handle.key, remove=not keep_workspace)
        if handle.state_dir is not None:
            await anyio.to_thread.run_sync(remove_root, handle.state_dir)

    def known_alive(self, handle: HostSandbox) -> bool:
        session = handle.session
        return session is not None and session.running and super().known_alive(handle)

    async def alive(self, handle: HostSandbox) -> bool:
        session = handle.session
        return session is not None and session.running and await super().alive(handle)

    def adopt(self, handle: HostSandbox, spec: BoxSpec, key: str) -> bool:
        if not super().adopt(handle, spec, key):
            return False
        session = self._session(handle)
        if handle.private_workspace is not None:  # renamed to the session's: map the new name
            workspace = ResolvedMount(str(handle.private_workspace), spec.mount_path, read_only=False)
            session.remap(workspace, session.extras)
        return True

    async def extend_mounts(self, handle: HostSandbox, current: BoxSpec, requested: BoxSpec) -> BoxSpec:
        """Mounts are only a path map here, so any other set of extra mounts can be taken."""
        _, extras = resolve_mounts(requested, self.settings.mount_roots())
        prepare_host_dirs(extras, os.geteuid(), os.getegid())
        session = self._session(handle)
        session.remap(session.workspace, extras)
        return current.model_copy(update={"extra_mounts": requested.extra_mounts})

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        # Agents die with their daemon (parent-death signal) and take their trees along: host
        # sessions are not taken over by a successor (survives_daemon is False), which keeps
        # their workspaces and starts new sessions.
        return await anyio.to_thread.run_sync(self.remove_dead_instances_state)

    # ── commands and files, translated to host paths ─────────────────────

    def for_agent(self, handle: HostSandbox, command: Command) -> Command:
        paths = self._session(handle).paths
        argv = None
        if command.argv:
            argv = [paths.command_path(command.argv[0]), *(paths.rewrite_argument(a) for a in command.argv[1:])]
        return replace(
            command,
            cwd=paths.to_host_resolved(command.cwd, "workdir" if command.script is not None else "cwd"),
            argv=argv,
            script=None if command.script is None else paths.rewrite_command(command.script),
        )

    def command_env(self, handle: HostSandbox, env: Mapping[str, str]) -> dict[str, str]:
        return self._session(handle).command_env(dict(env))

    def host_path_of(self, handle: HostSandbox, path: str) -> str:
        return self._session(handle).paths.to_host(path, "path")

    def roots_of(self, handle: HostSandbox, roots: Sequence[str]) -> list[str]:
        paths = self._session(handle).paths
        return [paths.to_host(root, "root") for root in roots or paths.sandbox_roots()]

    async def fs_request(
        self, handle: HostSandbox, op: str, path: str, roots: Sequence[str], fields: dict[str, Any], body: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        paths = self._session(handle).paths
        if op in WRITING_OPS and paths.is_read_only(path):
            raise AgentOpError(f"{path} is on a read-only mount", "EROFS")
        if paths.find(path) is None:  # outside every mount: nothing of the host is reachable there
            raise AgentOpError(f"{path} is outside the session's mounts ({', '.join(paths.sandbox_roots())})", "EACCES")
        try:
            # The agent still resolves symlinks and confines the result to the (host) roots.
            return await super().fs_request(handle, op, path, roots, fields, body)
        except AgentOpError as exc:  # its message names host paths: say them as the caller did
            raise AgentOpError(paths.to_sandbox_text(str(exc)), exc.code) from None

    def _sandbox_info(self, handle: HostSandbox, info: FileInfo) -> FileInfo:
        paths = self._session(handle).paths
        update = {k: paths.to_sandbox(v) for k, v in (("target", info.target), ("resolved", info.resolved)) if v}
        return info.model_copy(update=update) if update else info

    async def stat(self, handle: HostSandbox, path: str, roots: Sequence[str]) -> FileInfo:
        return self._sandbox_info(handle, await super().stat(handle, path, roots))

    async def move(self, handle: HostSandbox, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        return self._sandbox_info(handle, await super().move(handle, source, destination, roots))
