"""Readiness (``/readyz``, ``box_health``, ``box_get_backend_info``), LangBot 0.7's shape
(reference §D.12): in standard mode, is the backend available; in admission mode, every guarantee
a managed sandbox needs, each checked for real on this machine.

Where LangBot's nsjail runtime reports the four hard-storage checks as always false (so only its
"unsafe soft limits" override makes it ready), ours enforce them: the canonical tenant workspace
is a loop-mounted ext4 image of the policy's size (a hard quota in bytes and in inodes), /tmp is
a size-bounded tmpfs, the jail's root is read-only, and read-only mounts cannot grow.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import anyio

from boxruntime.backends.common import workspace as workspaces
from boxruntime.models import BackendInfo, BoxSpec, NetworkMode, ReadinessReport
from boxruntime.runtime.core import BoxRuntime
from boxruntime.tenancy.admission import Admission

log = logging.getLogger(__name__)

UNSAFE_SOFT_STORAGE_ENV = "LANGBOT_BOX_ALLOW_UNSAFE_SOFT_STORAGE_LIMITS"
STORAGE_CHECKS = ("hard_workspace_quota", "hard_read_only_mount_quota", "bounded_ephemeral_storage", "inode_quota")
ISOLATION_CHECKS = ("namespace_isolation", "mount_isolation", "network_isolation")
PROBE_SCRIPT = "readlink /proc/self/ns/net /proc/self/ns/mnt /proc/self/ns/pid && echo ok > /workspace/.probe-marker"


def unsafe_soft_storage_limits() -> bool:
    return os.environ.get(UNSAFE_SOFT_STORAGE_ENV, "").strip().casefold() in {"1", "true", "yes", "on"}


def backend_payload(info: BackendInfo) -> dict[str, Any]:
    """LangBot's ``{name, available}`` (plus ``unsafe_direct_execution`` for the host backend)."""
    payload: dict[str, Any] = {"name": info.name, "available": info.available}
    if info.unsafe_direct_execution:
        payload["unsafe_direct_execution"] = True
    if info.reason:
        payload["reason"] = info.reason  # ours: why it is not available, and what to do
    return payload


def cgroups_enforced(info: BackendInfo) -> bool:
    limits = info.enforced_limits
    return all(limits.get(name, "").startswith("enforced") for name in ("memory_mb", "pids_limit", "cpus"))


class Readiness:
    def __init__(self, runtime: BoxRuntime, admission: Admission) -> None:
        self._runtime = runtime
        self._admission = admission
        self._cached: tuple[float, ReadinessReport] | None = None
        self._lock = anyio.Lock()

    def forget(self) -> None:
        self._cached = None

    async def get(self) -> ReadinessReport:
        """The readiness object (frozen: every caller shares the cached one until it expires)."""
        ttl = self._admission.policy.readiness_cache_sec
        if self._cached is not None and time.monotonic() - self._cached[0] <= ttl:
            return self._cached[1]
        async with self._lock:  # one probe at a time; the others take its result
            if self._cached is not None and time.monotonic() - self._cached[0] <= ttl:
                return self._cached[1]
            result = await (self._managed() if self._admission.required else self._standard())
            self._cached = (time.monotonic(), result)
            return result

    async def _standard(self) -> ReadinessReport:
        info = await self._runtime.backend_info()
        return ReadinessReport(
            ready=info.available,
            mode="standard",
            backend=backend_payload(info),
            checks={"backend_available": info.available},
        )

    async def _managed(self) -> ReadinessReport:
        policy = self._admission.policy
        info = await self._runtime.backend_info()
        checks: dict[str, bool] = {
            "configuration": self._admission.config_error is None,
            "required_backend": info.name == policy.required_backend,
            "workspace_mount": False,
            "backend_available": info.available,
            "cgroup_v2": False,
            **dict.fromkeys(ISOLATION_CHECKS, False),
            **dict.fromkeys(STORAGE_CHECKS, False),
            "session_cap": policy.max_sessions <= 1,
            "managed_process_cap": policy.max_managed_processes == 0,
        }
        error = self._admission.config_error
        details: dict[str, Any] = {"available": info.available, "enforced_limits": info.enforced_limits}
        root: Path | None = None
        try:
            root = managed_workspace_root(self._runtime)
            checks["workspace_mount"] = True
        except ValueError as exc:
            error = error or str(exc)
        if checks["required_backend"] and info.available:
            # Named cgroup_v2 after LangBot's check; what it asks is that cpu, memory and pids are
            # enforced by cgroups, which ours are on v1 and v2 alike (details say which).
            checks["cgroup_v2"] = cgroups_enforced(info)
            if root is not None:
                try:
                    checks.update(await self._probe_isolation(root))
                except Exception as exc:
                    error = error or f"isolation probe failed: {exc}"
            hard = policy.workspace_quota_mb > 0 and workspaces.loop_quota_supported()
            checks["hard_workspace_quota"] = hard
            checks["inode_quota"] = hard  # an ext4 image has a fixed number of inodes
            checks["hard_read_only_mount_quota"] = True  # read-only binds cannot grow from inside
            checks["bounded_ephemeral_storage"] = info.enforced_limits.get("tmp", "").startswith("enforced")
            details["workspace_quota"] = (
                f"{policy.workspace_quota_mb} MB loop-mounted ext4" if hard else "no hard quota (policy or host)"
            )
        soft = unsafe_soft_storage_limits()
        if soft and checks["required_backend"]:
            for name in STORAGE_CHECKS:
                checks[name] = True
        return ReadinessReport(
            ready=all(checks.values()),
            mode="grant_enforced",
            backend={"name": info.name, "available": info.available, "details": details},
            checks=checks,
            unsafe_soft_storage_limits=soft,
            error=error or None,
        )

    async def _probe_isolation(self, root: Path) -> dict[str, bool]:
        """A throwaway offline sandbox on a probe directory: it must see its own network, mount and
        pid namespaces, and its write must land in the probe directory and nowhere else."""
        probe_dir = root / f".boxruntime-readiness-{secrets.token_hex(6)}"
        probe_dir.mkdir(mode=0o777)
        probe_dir.chmod(0o777)
        session_id = f"readiness-probe-{secrets.token_hex(6)}"
        spec = BoxSpec(
            session_id=session_id, cmd=PROBE_SCRIPT, host_path=str(probe_dir), network=NetworkMode.OFF, timeout_sec=15
        )
        try:
            result = await self._runtime.exec(spec)
            own = [os.readlink(f"/proc/self/ns/{name}") for name in ("net", "mnt", "pid")]
            seen = result.stdout.split()
            separate = result.exit_code == 0 and len(seen) == 3 and all(a != b for a, b in zip(seen, own, strict=True))
            marker = (probe_dir / ".probe-marker").read_text().strip() if (probe_dir / ".probe-marker").exists() else ""
            return {
                "namespace_isolation": separate and seen[2] != own[2],
                "mount_isolation": separate and seen[1] != own[1] and marker == "ok",
                "network_isolation": separate and seen[0] != own[0],
            }
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._runtime.delete_session(session_id)
                except Exception:
                    log.warning("readiness probe session %s could not be removed", session_id)
                await anyio.to_thread.run_sync(shutil.rmtree, probe_dir, True)


def managed_workspace_root(runtime: BoxRuntime) -> Path:
    """LangBot's managed workspace root: ``default_workspace``, inside an allowed mount root, an
    existing directory the daemon can write. ValueError saying which rule fails."""
    settings = runtime.settings
    base = settings.tenant_root
    if base is None:
        raise ValueError("Managed sandbox admission requires box.local.default_workspace")
    default = Path(os.path.realpath(base.parent))
    roots = [Path(os.path.realpath(r)) for r in settings.allowed_mount_roots]
    if not any(default == r or r in default.parents for r in roots):
        raise ValueError("Managed sandbox workspace is outside box.local.allowed_mount_roots")
    if not default.is_dir():
        raise ValueError("Managed sandbox workspace path is not a directory")
    if not os.access(default, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError("Managed sandbox workspace path is not writable")
    return default
