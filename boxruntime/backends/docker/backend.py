"""Docker backend, through the Engine API (the ``docker`` package), never the CLI.

Each session is one hardened container whose init process is the agent: network ``none``
unless asked, cpu/memory/pids limits, read-only rootfs, a size-bounded ``/tmp``, all
capabilities dropped, no-new-privileges, a non-root user. Containers carry labels naming this
daemon instance and its data dir, so cleanup only ever removes what a dead daemon of this data
dir created.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount

from boxruntime.backends.agent.backend import (
    AGENT_DIR_IN_SANDBOX,
    AGENT_DIR_OF_SCRIPTS,
    AGENT_PATH_IN_SANDBOX,
    SANDBOX_HOME,
    AgentBackend,
    AgentHandle,
    installed_agent,
)
from boxruntime.backends.agent.client import AgentClient
from boxruntime.backends.common import host_mounts
from boxruntime.backends.common import workspace as workspaces
from boxruntime.backends.common.completed import RanToCompletion
from boxruntime.backends.common.workspace_acl import before_command
from boxruntime.backends.contract import Command, CompletedCommand, Process
from boxruntime.backends.docker import engine_exec, live_skills, takeover, workspace_carrier
from boxruntime.config import Settings
from boxruntime.errors import (
    BoxBackendUnavailableError,
    BoxError,
    BoxImageNotFoundError,
    BoxSandboxError,
    BoxValidationError,
)
from boxruntime.instance import instance_alive
from boxruntime.models import LANGBOT_DEFAULT_IMAGE, BackendInfo, BoxSpec, NetworkMode
from boxruntime.security import (
    CONTAINER_CAP_DROP,
    CONTAINER_SECURITY_OPT,
    ResolvedMount,
    prepare_host_dirs,
    resolve_mounts,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_MANAGED = "boxruntime.managed"
LABEL_INSTANCE = "boxruntime.instance"
LABEL_DATA_DIR = takeover.LABEL_DATA_DIR
LABEL_SESSION = "boxruntime.session_id"
LABEL_KEY = "boxruntime.session_key"
AGENT_START_TIMEOUT = 30.0
ENGINE_EXEC_GRACE_SEC = 30.0
NO_PYTHON_MARKER = "boxruntime: no python3 in this image"
# PID 1 of every sandbox: the agent where the image has python3 (-S -E: stdlib only, not steered
# by the image's PYTHON* variables), else a quiet placeholder and
# commands go through the Engine API. $1 is the agent script, $2 its socket.
INIT_SCRIPT = f"""
if command -v python3 >/dev/null 2>&1; then exec python3 -S -E "$1" "$2"; fi
echo "{NO_PYTHON_MARKER}; commands go through the Engine API" >&2
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""
PULL_HINT = (
    "build the default image with `boxruntime image build`, or `docker pull {image}` "
    "where a registry is reachable (e.g. python:3.12-slim)"
)


@dataclass(kw_only=True)
class DockerSandbox(AgentHandle):
    container_id: str | None = None
    # No python3 in the image: no agent; commands go through the Engine API's own exec.
    engine_exec: bool = False
    skills_root: Path | None = None  # the shared directory of skills added live (live_skills)
    carrier: Path | None = None  # a pooled sandbox's workspace carrier (workspace_carrier)
    carrier_target: str | None = None  # where the carrier is bound inside the sandbox


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def engine_error(what: str, exc: Exception) -> BoxError:
    """What the Engine (or the way to it) refused, as a Box error: a 400 is a request it will
    not take (an image reference, more CPUs than the host has), anything else the sandbox's or
    the Engine's failure. No SDK exception leaves this backend."""
    if isinstance(exc, docker.errors.APIError):
        detail = exc.explanation or str(exc)
        if exc.status_code == 400:
            return BoxValidationError(f"{what}: the Docker engine refused the request: {detail}")
        return BoxSandboxError(f"{what}: Docker engine error {exc.status_code}: {detail}")
    if isinstance(exc, docker.errors.DockerException):
        return BoxSandboxError(f"{what}: {type(exc).__name__}: {exc}")
    if type(exc).__module__.startswith(("requests", "urllib3")):  # OSErrors: the Engine's socket
        return BoxBackendUnavailableError(f"{what}: the Docker engine is not reachable: {exc}")
    return BoxSandboxError(f"{what}: {type(exc).__name__}: {exc}")  # a host file the backend prepares


class DockerBackend(AgentBackend[DockerSandbox]):
    name = "docker"

    def __init__(self, settings: Settings, instance_id: str) -> None:
        super().__init__(settings, instance_id)
        self._client: docker.DockerClient | None = None

    # ── engine access ────────────────────────────────────────────────────

    def _engine(self) -> docker.DockerClient:
        if self._client is None:
            try:
                client = docker.DockerClient(base_url=docker_host(), timeout=120)
                client.ping()
            except Exception as exc:
                raise BoxBackendUnavailableError(
                    f"Docker engine not reachable at {docker_host()} — start it or use "
                    f"--backend nsjail ({type(exc).__name__}: {exc})"
                ) from exc
            self._client = client
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Blocking SDK calls run in a worker thread; the event loop never waits on the engine.
        What the SDK raises comes out as a Box error (``engine_error``)."""
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except (docker.errors.DockerException, OSError) as exc:
            raise engine_error(f"docker ({getattr(fn, '__name__', 'call')})", exc) from exc

    async def probe(self) -> BackendInfo:
        try:
            await self._call(self._engine)
            await self._call(self._check_same_path_data_dir)
        except BoxBackendUnavailableError as exc:
            return BackendInfo(name=self.name, available=False, reason=str(exc))
        limits = {
            "network": "enforced (network none unless network=on)",
            "cpus": (
                "enforced (CFS quota)"
                if self.settings.docker_cpu_limit_enabled
                else "not enforced (disabled by config)"
            ),
            "memory_mb": "enforced (memory cgroup, no swap)",
            "pids_limit": "enforced (pids cgroup)",
            "tmp": f"enforced ({self.settings.tmp_size_mb} MB tmpfs)",
            "workspace_quota_mb": "enforced for private workspaces ("
            + ("loop-mounted ext4" if workspaces.loop_quota_supported() else "tmpfs")
            + "); not enforceable on host_path mounts",
        }
        return BackendInfo(name=self.name, available=True, enforced_limits=limits)

    def _check_same_path_data_dir(self) -> None:
        """A daemon in a container hands the engine bind sources from its data dir; the engine
        resolves them on the host, so the data dir must be the host's, at the same path."""
        if not Path("/.dockerenv").exists():
            return
        try:
            me = self._engine().containers.get(socket.gethostname())
        except docker.errors.APIError:
            return  # not one of this engine's containers (or hostname set): nothing to compare
        data_dir = str(self.settings.data_dir.resolve())
        for mount in me.attrs.get("Mounts", []):
            destination = mount.get("Destination", "")
            if mount.get("Source") == destination and (
                data_dir == destination or data_dir.startswith(destination.rstrip("/") + "/")
            ):
                return
        raise BoxBackendUnavailableError(
            f"this daemon runs in a container whose data dir {data_dir} is not the host's at the same "
            f"path; sandboxes' bind mounts would fail. Mount it as -v {data_dir}:{data_dir}"
        )

    # ── images ───────────────────────────────────────────────────────────

    def _has_image(self, name: str) -> bool:
        try:
            self._engine().images.get(name)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 400:  # not a reference at all (the models check it first)
                raise BoxValidationError(f"invalid image reference {name!r}: {exc.explanation or exc}") from exc
            raise

    def _resolve_image(self, requested: str) -> str:
        if self._has_image(requested):
            return requested
        default = self.settings.default_image
        if requested == LANGBOT_DEFAULT_IMAGE and self._has_image(default):
            return default  # LangBot's default lives on a registry; ours is local
        try:
            self._engine().images.pull(requested)
            return requested
        except docker.errors.APIError as exc:
            raise BoxImageNotFoundError(
                f"image {requested} is not available locally and could not be pulled "
                f"({exc.explanation or exc}); " + PULL_HINT.format(image=requested)
            ) from exc

    # ── lifecycle ────────────────────────────────────────────────────────

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> DockerSandbox:
        workspace_mount, extra_mounts = resolve_mounts(spec, self.settings.mount_roots())
        host_mounts = [m for m in (workspace_mount, *extra_mounts) if m is not None]
        prepare_host_dirs(host_mounts, self.settings.sandbox_uid, self.settings.sandbox_gid)
        image = await self._call(self._resolve_image, spec.image)
        handle = DockerSandbox(
            backend=self.name,
            sandbox_id=f"boxruntime-{self.instance_id}-{key}",
            key=key,
            resolved_image=image,
            state_dir=self.state_dir(key),
        )
        uid, gid = workspaces.sandbox_identity(self.settings, workspace_mount, handle.notes)
        # The workspace first: a refusal there must leave nothing behind (no agent directory).
        ws = workspaces.plan(self.settings.data_dir, spec, key, workspace_mount, uid, gid)
        handle.adopt_workspace(ws)
        agent_dir = self.agent_dir(handle, uid, gid)
        mounts = [
            Mount(AGENT_DIR_OF_SCRIPTS, str(installed_agent(self.settings.data_dir)), type="bind", read_only=True),
            Mount(AGENT_DIR_IN_SANDBOX, str(agent_dir), type="bind"),
            *self.runtime_mounts(handle),
        ]
        if ws.host is None:
            size = ws.tmpfs_mb * 1024 * 1024
            mounts.append(Mount(ws.mount_path, None, type="tmpfs", tmpfs_size=size, tmpfs_mode=0o1777))
        skills, extra_mounts = live_skills.split(spec, extra_mounts, self.settings.skills_dir)
        carrier: Path | None = None
        try:
            if ws.host is not None and pooled and self.swaps_workspace():
                carrier = workspace_carrier.attach(handle, ws.mount_path)
                mounts.append(Mount(ws.mount_path, str(carrier), type="bind", propagation="rslave"))
            elif ws.host is not None:
                mounts.append(Mount(ws.mount_path, ws.host.host_path, type="bind", read_only=ws.host.read_only))
            mounts += [Mount(m.mount_path, m.host_path, type="bind", read_only=m.read_only) for m in extra_mounts]
            if skills:
                mounts.append(self._live_skills_mount(spec, handle, skills))
            user = f"{uid}:{gid}"
            container = await self._call(self._run_container, spec, key, image, mounts, handle.sandbox_id, user)
            handle.container_id = container.id
            if carrier is not None and ws.host is not None:
                await self._call(workspace_carrier.fill, carrier, ws.host)
            handle.agent = AgentClient(agent_dir, handle.sandbox_id, pass_fds=self.passes_fds)
            await self._wait_for_agent(handle, container)
            if carrier is not None and ws.host is not None and handle.agent is not None:
                # (Without an agent, in an image with no python3, there is nothing to ask.)
                await workspace_carrier.verify(handle, Path(ws.host.host_path), lambda path: self._exists(handle, path))
            self.seal_agent_dir(agent_dir)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(handle, keep_workspace=True)
            raise
        return handle

    async def _exists(self, handle: DockerSandbox, path: str) -> bool:
        return (await self.stat(handle, path, [path.rsplit("/", 1)[0] or "/"])).exists

    def swaps_workspace(self) -> bool:
        return workspace_carrier.supported()

    def adopt(self, handle: DockerSandbox, spec: BoxSpec, key: str) -> bool:
        if not spec.has_host_mount():
            return super().adopt(handle, spec, key)
        return workspace_carrier.hand_over(self.settings, handle, spec, key)

    def _live_skills_mount(self, spec: BoxSpec, handle: DockerSandbox, skills: dict[str, ResolvedMount]) -> Mount:
        """``<workspace>/.skills`` from a shared host directory (see live_skills)."""
        assert handle.state_dir is not None
        root = handle.state_dir / "skills"
        live_skills.prepare(root, skills)
        handle.skills_root = root
        return Mount(live_skills.skills_target(spec), str(root), type="bind", read_only=True, propagation="rslave")

    async def extend_mounts(self, handle: DockerSandbox, current: BoxSpec, requested: BoxSpec) -> BoxSpec:
        root = handle.skills_root
        if root is None:
            return await super().extend_mounts(handle, current, requested)
        _, resolved = resolve_mounts(requested, self.settings.mount_roots())
        added = live_skills.additions(current, requested, resolved, self.settings.skills_dir)
        for _, mount, name in added:
            await self._call(live_skills.add, root, name, mount)
        log.info("session %s: added skills live: %s", current.session_id, ", ".join(n for _, _, n in added))
        return current.model_copy(update={"extra_mounts": [*current.extra_mounts, *(m for m, _, _ in added)]})

    def runtime_mounts(self, handle: DockerSandbox) -> list[Mount]:
        """Mounts a runtime needs in every sandbox (see backends/gvisor)."""
        return []

    def container_options(self, spec: BoxSpec) -> dict[str, Any]:
        """Engine options of a sandbox's container that differ by runtime (see backends/gvisor)."""
        return {
            "mem_limit": f"{spec.memory_mb}m",
            "memswap_limit": f"{spec.memory_mb}m",
            "pids_limit": spec.pids_limit,
        }

    def _run_container(
        self, spec: BoxSpec, key: str, image: str, mounts: list[Mount], name: str, user: str
    ) -> Container:
        engine = self._engine()
        kwargs: dict[str, Any] = self.container_options(spec)
        if self.settings.docker_cpu_limit_enabled:
            kwargs["nano_cpus"] = int(spec.cpus * 1_000_000_000)
        try:
            return engine.containers.run(
                image,
                entrypoint=["/bin/sh", "-c", INIT_SCRIPT, "boxruntime-init"],
                command=[AGENT_PATH_IN_SANDBOX, f"{AGENT_DIR_IN_SANDBOX}/agent.sock"],
                name=name,
                detach=True,
                labels={
                    LABEL_MANAGED: "true",
                    LABEL_INSTANCE: self.instance_id,
                    LABEL_DATA_DIR: str(self.settings.data_dir.resolve()),
                    LABEL_SESSION: spec.session_id,
                    LABEL_KEY: key,
                },
                user=user,
                working_dir="/",
                environment={"HOME": SANDBOX_HOME, "LANG": "C.UTF-8"},
                network_mode="none" if spec.network == NetworkMode.OFF else "bridge",
                read_only=spec.read_only_rootfs,
                tmpfs={"/tmp": f"size={self.settings.tmp_size_mb}m,mode=1777"},
                mounts=mounts,
                cap_drop=CONTAINER_CAP_DROP,
                security_opt=CONTAINER_SECURITY_OPT,
                init=False,
                **kwargs,
            )
        except docker.errors.APIError as exc:
            raise engine_error("docker could not start the sandbox", exc) from exc

    async def _wait_for_agent(self, handle: DockerSandbox, container: Container) -> None:
        """Connect to the agent; or, in an image without python3, switch to Engine-API exec."""
        agent = handle.agent
        assert agent is not None
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while True:
            try:
                await agent.connect(timeout=0.5)
                return
            except BoxSandboxError:
                pass
            state, logs = await self._call(_state_and_logs, container)
            if NO_PYTHON_MARKER in logs:
                await agent.close()
                handle.agent = None
                handle.engine_exec = True
                handle.notes.append(
                    f"image {handle.resolved_image} has no python3: commands run through the Engine API "
                    "(slower; no CPU/memory accounting, no streaming, no file operations or managed processes)"
                )
                return
            if state not in ("created", "running") or time.monotonic() > deadline:
                raise BoxSandboxError(f"the sandbox did not start in image {handle.resolved_image}: {logs or state}")

    async def run(self, handle: DockerSandbox, command: Command) -> CompletedCommand:
        if not handle.engine_exec:
            return await super().run(handle, command)
        container_id = handle.container_id
        assert container_id is not None
        await before_command(handle.workspace_acl, command.cwd)
        limit = (command.timeout or 0.0) + ENGINE_EXEC_GRACE_SEC if command.timeout is not None else None
        with anyio.fail_after(limit):
            return await self._call(lambda: engine_exec.run(self._engine().api, container_id, command))

    async def start_command(self, handle: DockerSandbox, command: Command, *, lasting: bool = False) -> Process:
        if not handle.engine_exec:
            return await super().start_command(handle, command, lasting=lasting)
        if lasting:
            raise BoxSandboxError(
                f"image {handle.resolved_image} has no python3: managed processes need python3 in the image"
            )
        return RanToCompletion(await self.run(handle, command))  # no streaming through the Engine API

    async def alive(self, handle: DockerSandbox) -> bool:
        if not handle.engine_exec:
            return await super().alive(handle)
        try:
            container = await self._call(lambda: self._engine().containers.get(handle.sandbox_id))
        except BoxError:
            return False
        state, _ = await self._call(_state_and_logs, container)
        return state == "running"

    async def stop(self, handle: DockerSandbox, keep_workspace: bool = False) -> None:
        if handle.agent is not None:
            await handle.agent.close()
        await self._call(self._remove_container, handle.sandbox_id)
        handle.close_workspace_acl()
        workspaces.release(self.settings.data_dir, handle.key, remove=not keep_workspace)
        if handle.state_dir is not None:
            host_mounts.remove_tree(handle.state_dir)

    def _remove_container(self, name: str) -> None:
        try:
            container = self._engine().containers.get(name)
            if container.status == "paused":
                container.unpause()  # frozen processes would not take the kill
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                log.warning("could not remove container %s: %s", name, exc)

    # ── a successor's take-over, and freezing ────────────────────────────

    def survives_daemon(self) -> bool:
        return True  # a container runs on whatever happens to its daemon

    def describe(self, handle: DockerSandbox) -> dict[str, Any]:
        return {**super().describe(handle), **takeover.describe(handle)}

    async def recover(self, spec: BoxSpec, key: str, described: Mapping[str, Any]) -> DockerSandbox | None:
        name = described.get("sandbox_id")
        if not isinstance(name, str):
            return None
        state = self.claim_state(described)
        engine = await self._call(self._engine)
        status = await self._call(takeover.running_or_paused, engine, name, self.settings.data_dir)
        handle = DockerSandbox(backend=self.name, sandbox_id=name, key=key, state_dir=state)
        takeover.restore(handle, described, state)
        usable = status is not None and state is not None
        if usable and status == "paused":
            await self._call(engine.api.unpause, name)
        if usable:
            usable = await self.finish_recovery(handle, spec, key, agent=not handle.engine_exec)
        if not usable:
            with anyio.CancelScope(shield=True):
                await self._call(self._remove_container, name)
                if state is not None:
                    host_mounts.remove_tree(state)
            return None
        return handle

    def can_freeze(self) -> bool:
        return True  # docker pause: the cgroup freezer (runc), or the runtime's own (runsc)

    async def freeze(self, handle: DockerSandbox) -> None:
        await self._call(self._engine().api.pause, handle.sandbox_id)

    async def thaw(self, handle: DockerSandbox) -> None:
        try:
            await self._call(self._engine().api.unpause, handle.sandbox_id)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not paused
                raise BoxSandboxError(f"could not thaw sandbox {handle.sandbox_id}: {exc.explanation or exc}") from exc

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        """Remove containers of dead daemons of this data dir, except those in ``spare`` (taken
        over by a live daemon); never anyone else's."""
        return await self._call(self._cleanup_orphans, frozenset(spare))

    def _own_containers(self) -> list[Container]:
        data_dir = str(self.settings.data_dir.resolve())
        found: list[Container] = self._engine().containers.list(
            all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_DATA_DIR}={data_dir}"]}
        )
        return found

    def _cleanup_orphans(self, spare: frozenset[str]) -> list[str]:
        removed: list[str] = []
        for container in self._own_containers():
            owner = container.labels.get(LABEL_INSTANCE, "")
            if owner == self.instance_id or container.name in spare or instance_alive(self.settings.data_dir, owner):
                continue
            self._remove_container(container.name)
            removed.append(container.name)
        self.remove_dead_instances_state()
        return removed

    async def remove_own(self) -> list[str]:
        """Remove every container of this instance, registered or not (shutdown)."""

        def remove_all() -> list[str]:
            names = []
            for container in self._own_containers():
                if container.labels.get(LABEL_INSTANCE) == self.instance_id:
                    self._remove_container(container.name)
                    names.append(container.name)
            return names

        return await self._call(remove_all)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _state_and_logs(container: Container) -> tuple[str, str]:
    try:
        container.reload()
        raw: bytes = container.logs(tail=20)
    except docker.errors.NotFound:
        return "removed", ""
    except docker.errors.APIError as exc:
        return "unknown", str(exc)
    return str(container.status), raw.decode("utf-8", "replace").strip()[-1500:]
