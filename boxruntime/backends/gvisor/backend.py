"""gVisor backend: the Docker backend with the ``runsc`` runtime.

Each sandbox gets its own user-space kernel (gVisor's Sentry) between its processes and the
host's. Everything else is the Docker backend's: the same container, image, mounts, hardening
and agent. What differs, each for a measured reason (README "gVisor"):

- the container names the runtime (``BOXRUNTIME_GVISOR_RUNTIME``, default ``runsc``), which
  must be registered with the engine with ``--host-uds=create``: the agent's socket, made
  inside the sandbox in a bind-mounted directory, is then a host socket the daemon reaches;
- a managed process's stdio are the daemon's own sockets (``passes_fds = False``): its pipes
  live in gVisor's kernel, and SCM_RIGHTS cannot carry them out; a terminal stays with the agent;
- pids: the host's pids cgroup also counts gVisor's own threads, and going over it ends the
  whole sandbox; so the limit is RLIMIT_NPROC, which gVisor's kernel enforces per sandbox user
  (a fork over it fails with EAGAIN, as under runc), and the cgroup is a backstop above it;
- memory: the host's memory cgroup holds gVisor's kernel too, and gVisor has no OOM killer of
  its own: a sandbox that goes over it is ended as a whole. The cgroup gets headroom for the
  kernel, and a command that ends a sandbox this way gets an error that says so;
- network: a runtime registered with ``--network=none`` cannot give a sandbox a network, so
  ``network: on`` is refused;
- a preloaded shim makes ``ls`` and ``stat`` work under Debian's runsc (statx.py);
- gVisor checks file permissions by their mode bits and ignores POSIX ACLs, so a writable host
  workspace that root owns (written through an ACL entry on runc) is refused;
- the warm pool serves private workspaces only (``swaps_workspace``);
- a sandbox outlives its daemon and is taken over by a successor (its files, /tmp, everything
  it runs), but its managed processes are not (``process_ref`` is None): their stdio are the
  dead daemon's own sockets, which end with it, and no successor can be given them again; the
  successor ends them (``end_strays``), and a client starts them afresh. Freezing is Docker's
  pause, which runsc implements by stopping every task in gVisor's kernel.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import docker.errors
from docker.types import Mount, Ulimit

from boxruntime.backends.agent.client import AgentLostError
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.contract import Command, CompletedCommand, Process
from boxruntime.backends.docker.backend import DockerBackend, DockerSandbox
from boxruntime.backends.gvisor import statx as gvisor_statx
from boxruntime.errors import BoxBackendUnavailableError, BoxSandboxError, BoxValidationError
from boxruntime.models import BackendInfo, BoxSpec, NetworkMode
from boxruntime.security import resolve_mounts

# The pids cgroup also holds gVisor's own threads: about 43 idle, and about 8 host tasks per
# process under the ptrace platform (254 processes: 1971 tasks). Its memory cgroup holds gVisor's
# kernel too: 16 MB idle; a process's 100 MB allocation peaks at 121 MB. Measured on these
# machines: README "gVisor".
PIDS_PER_PROCESS = 8
PIDS_BASE = 128
MEMORY_HEADROOM_MB = 128
OOM_VERDICT_WAIT_SEC = 10.0  # only when the agent was lost; a loaded engine takes seconds to record the stop
HOST_UDS_ARGS = ("--host-uds=create", "--host-uds=all")
REGISTER_HINT = (
    "install runsc (apt-get install runsc) and register it in /etc/docker/daemon.json as "
    '"runtimes": {{"{name}": {{"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", '
    '"--network=none", "--host-uds=create"]}}}}, then `kill -HUP $(pidof dockerd)` (./dev does this)'
)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The runtime as the engine has it registered."""

    name: str
    path: str
    args: tuple[str, ...]

    @property
    def network(self) -> bool:
        return "--network=none" not in self.args


class GvisorBackend(DockerBackend):
    name = "gvisor"
    passes_fds = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runtime: Runtime | None = None
        self._shim: Path | None = None
        self._shim_built = False
        # Sessions started at once must not build the shim at once: they share a staging
        # directory, and one's rename would pull it from under another's compiler.
        self._shim_lock = anyio.Lock()

    def _registered_runtime(self) -> Runtime:
        """The runtime, checked: registered, its binary present, and the socket reachable."""
        name = self.settings.gvisor_runtime
        runtimes: dict[str, Any] = self._engine().info().get("Runtimes") or {}
        entry = runtimes.get(name)
        if not isinstance(entry, dict):
            raise BoxBackendUnavailableError(
                f"the Docker engine has no runtime named {name!r} (it has {', '.join(sorted(runtimes))}): "
                + REGISTER_HINT.format(name=name)
            )
        runtime = Runtime(name, str(entry.get("path") or name), tuple(entry.get("runtimeArgs") or ()))
        # A daemon in a container cannot see the host's files: only a local one checks the path.
        if not Path("/.dockerenv").exists() and not (os.path.isfile(runtime.path) or shutil.which(runtime.path)):
            raise BoxBackendUnavailableError(
                f"the {name!r} runtime is registered as {runtime.path}, which does not exist: install runsc"
            )
        if not any(arg in HOST_UDS_ARGS for arg in runtime.args):
            raise BoxBackendUnavailableError(
                f"the {name!r} runtime is registered without --host-uds=create: the agent's socket would "
                "stay inside gVisor, out of the daemon's reach. Add it to its runtimeArgs, then HUP dockerd"
            )
        return runtime

    async def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = await self._call(self._registered_runtime)
        return self._runtime

    async def probe(self) -> BackendInfo:
        info = await super().probe()
        if not info.available:
            return info
        try:
            self._runtime = None  # the registration may have changed since
            runtime = await self.runtime()
        except BoxBackendUnavailableError as exc:
            return BackendInfo(name=self.name, available=False, reason=str(exc))
        return BackendInfo(name=self.name, available=True, enforced_limits=self.limits(runtime))

    def limits(self, runtime: Runtime) -> dict[str, str]:
        """What holds under gVisor; each is checked by integration_tests/test_gvisor.py."""
        cpus = (
            "enforced (CFS quota on the whole sandbox, gVisor's kernel included)"
            if self.settings.docker_cpu_limit_enabled
            else "not enforced (disabled by config)"
        )
        return {
            "kernel": f"gVisor (runtime {runtime.name}: {' '.join(runtime.args)}); not the host's",
            "network": (
                "enforced (network none unless network=on)"
                if runtime.network
                else "always off (the runtime runs with --network=none; network=on is refused)"
            ),
            "cpus": cpus,
            "memory_mb": (
                f"enforced for the sandbox as a whole (memory cgroup with {MEMORY_HEADROOM_MB} MB more for "
                "gVisor's kernel, no swap); going over it ends the whole sandbox, not one process"
            ),
            "pids_limit": "enforced (RLIMIT_NPROC in gVisor's kernel; the pids cgroup as a backstop)",
            "tmp": f"enforced ({self.settings.tmp_size_mb} MB tmpfs in gVisor)",
            "read_only_rootfs": "enforced (gVisor mounts the image read-only)",
            "workspace_quota_mb": "enforced for private workspaces ("
            + ("loop-mounted ext4" if workspaces.loop_quota_supported() else "tmpfs")
            + "); not enforceable on host_path mounts",
        }

    def runtime_mounts(self, handle: DockerSandbox) -> list[Mount]:
        if self._shim is None:
            handle.notes.append(gvisor_statx.MISSING_NOTE)
            return []
        return gvisor_statx.mounts(self._shim)

    def container_options(self, spec: BoxSpec) -> dict[str, Any]:
        assert self._runtime is not None  # start() read it
        memory = f"{spec.memory_mb + MEMORY_HEADROOM_MB}m"
        return {
            "runtime": self._runtime.name,
            "mem_limit": memory,
            "memswap_limit": memory,
            "pids_limit": spec.pids_limit * PIDS_PER_PROCESS + PIDS_BASE,
            "ulimits": [Ulimit(name="nproc", soft=spec.pids_limit, hard=spec.pids_limit)],
        }

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> DockerSandbox:
        runtime = await self.runtime()
        if spec.network == NetworkMode.ON and not runtime.network:
            raise BoxValidationError(
                f"network=on is not available on the gvisor backend here: the {runtime.name} runtime is "
                "registered with --network=none (runsc's network stack cannot start in the host's network "
                "namespace on this machine). Use network=off, or the docker backend for this session"
            )
        self._refuse_root_owned_workspace(spec)
        async with self._shim_lock:
            if not self._shim_built:
                self._shim = await self._call(gvisor_statx.build, self.settings.data_dir)
                self._shim_built = True
        return await super().start(spec, key, pooled)

    def swaps_workspace(self) -> bool:
        """No: a mount made on the carrier directory itself after start does not reach a gVisor
        sandbox (its gofer holds the directory that was there). Mounts made below a bound
        directory do, so skills still arrive live. Pooled sandboxes serve private workspaces."""
        return False

    def adopt(self, handle: DockerSandbox, spec: BoxSpec, key: str) -> bool:
        if spec.has_host_mount() and self._root_owned_workspace(spec) is not None:
            return False  # start() says why
        return super().adopt(handle, spec, key)

    def _root_owned_workspace(self, spec: BoxSpec) -> str | None:
        workspace, _ = resolve_mounts(spec, self.settings.mount_roots())
        if workspace is None or workspace.read_only or not os.path.isdir(workspace.host_path):
            return None
        return workspace.host_path if os.stat(workspace.host_path).st_uid == 0 else None

    def _refuse_root_owned_workspace(self, spec: BoxSpec) -> None:
        path = self._root_owned_workspace(spec)
        if path is not None:
            raise BoxValidationError(
                f"the gvisor backend cannot make host_path {path} writable: root owns it, and gVisor checks "
                "permissions by mode bits only, ignoring the POSIX ACL entry that lets the sandbox user write "
                "it under runc. Give the directory to a non-root owner (the sandbox then runs as that owner), "
                "mount it read-only, or use the docker backend"
            )

    def process_ref(self, process: Process) -> str | None:
        """None: a managed process's stdio are this daemon's own sockets (``passes_fds``), which
        end with it; a successor could take over the process but never its input or output."""
        return None

    # ── a sandbox that gVisor ended ──────────────────────────────────────

    async def run(self, handle: DockerSandbox, command: Command) -> CompletedCommand:
        try:
            return await super().run(handle, command)
        except AgentLostError as exc:
            raise await self._explained(handle, exc) from exc

    async def _explained(self, handle: DockerSandbox, exc: AgentLostError) -> BoxSandboxError:
        """The agent's connection broke: say so plainly if the memory cgroup ended the sandbox."""

        def oom_killed() -> bool:
            # The agent's socket closes as gVisor goes down, before the engine has recorded why:
            # wait (briefly) for the container to be seen stopped.
            deadline = time.monotonic() + OOM_VERDICT_WAIT_SEC
            while True:
                try:
                    state = self._engine().api.inspect_container(handle.container_id)["State"]
                except docker.errors.APIError:
                    return False
                if state.get("OOMKilled") or not state.get("Running") or time.monotonic() > deadline:
                    return bool(state.get("OOMKilled"))
                time.sleep(0.05)

        if not await self._call(oom_killed):
            return exc
        return BoxSandboxError(
            f"the sandbox {handle.sandbox_id} ran out of memory and was ended as a whole: under gVisor the "
            "memory limit holds the sandbox's kernel too, and there is no OOM killer inside to end just the "
            "process. Its processes and /tmp are gone; the next command starts a new sandbox"
        )
