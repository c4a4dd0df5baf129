"""Which cgroup controllers the nsjail backend can use here, and how.

These machines have cgroup v1; v2 is used where it is mounted and delegable. Each controller
gets a ``boxruntime`` parent group that nsjail puts one child group per jail under. Where a
controller is not usable (not root, not mounted) the backend falls back to rlimits and says
so: ``enforcement()`` is what ``box_get_backend_info`` reports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

PARENT = "boxruntime"
V1_ROOT = Path("/sys/fs/cgroup")
V2_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = {"memory": "memory", "pids": "pids", "cpu": "cpu"}


@dataclass(frozen=True)
class CgroupSupport:
    version: int | None  # 1, 2, or None when no controller is usable
    controllers: frozenset[str] = field(default_factory=frozenset)
    swap_limit: bool = False
    reason: str = ""

    def jail_args(self, memory_mb: int, pids: int, cpus: float) -> list[str]:
        """nsjail flags for these limits; rlimits stand in for a missing controller."""
        args: list[str] = []
        if self.version == 2:
            args += ["--use_cgroupv2", "--cgroupv2_mount", str(V2_ROOT / PARENT)]
        memory_bytes = str(memory_mb * 1024 * 1024)
        if "memory" in self.controllers:
            args += ["--cgroup_mem_max", memory_bytes]
            if self.version == 1:
                args += ["--cgroup_mem_parent", PARENT]
                if self.swap_limit:
                    args += ["--cgroup_mem_memsw_max", memory_bytes]
            else:
                args += ["--cgroup_mem_swap_max", "0"]
        else:
            args += ["--rlimit_as", str(memory_mb)]
        if "pids" in self.controllers:
            args += ["--cgroup_pids_max", str(pids)]
            if self.version == 1:
                args += ["--cgroup_pids_parent", PARENT]
        else:
            args += ["--rlimit_nproc", str(pids)]
        if "cpu" in self.controllers:
            args += ["--cgroup_cpu_ms_per_sec", str(max(1, int(cpus * 1000)))]
            if self.version == 1:
                args += ["--cgroup_cpu_parent", PARENT]
        return args

    def enforcement(self) -> dict[str, str]:
        how = f"cgroup v{self.version}" if self.version else ""
        memory = f"enforced ({how}{', no swap' if self.swap_limit or self.version == 2 else ''})"
        return {
            "memory_mb": memory if "memory" in self.controllers else "approximate (RLIMIT_AS per process)",
            "pids_limit": (
                f"enforced ({how})"
                if "pids" in self.controllers
                else "approximate (RLIMIT_NPROC, counts every process of the sandbox user)"
            ),
            "cpus": f"enforced ({how})" if "cpu" in self.controllers else "not enforced (no cpu cgroup)",
        }

    def group_dir(self, controller: str, jail_pid: int) -> Path | None:
        """Where nsjail put the jail with host pid ``jail_pid`` for ``controller``."""
        if controller not in self.controllers:
            return None
        if self.version == 1:
            return V1_ROOT / _V1_CONTROLLERS[controller] / PARENT / f"NSJAIL.{jail_pid}"
        return V2_ROOT / PARENT / f"NSJAIL.{jail_pid}"

    def oom_kills(self, jail_pid: int) -> int | None:
        """The jail's OOM-kill counter, read from the host (the jail cannot see /sys)."""
        group = self.group_dir("memory", jail_pid)
        if group is None:
            return None
        source = group / ("memory.oom_control" if self.version == 1 else "memory.events")
        try:
            for line in source.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            return None
        return None


def _writable_v1(controller: str) -> bool:
    base = V1_ROOT / controller
    if not (base / "cgroup.procs").exists():
        return False
    parent = base / PARENT
    with contextlib.suppress(OSError):
        parent.mkdir(exist_ok=True)
    return parent.is_dir() and os.access(parent, os.W_OK)


def _detect_v2() -> CgroupSupport | None:
    controllers_file = V2_ROOT / "cgroup.controllers"
    if not controllers_file.exists():
        return None
    available = set(controllers_file.read_text().split())
    parent = V2_ROOT / PARENT
    try:
        parent.mkdir(exist_ok=True)
        # Children of our parent may use these controllers.
        wanted = [c for c in ("memory", "pids", "cpu") if c in available]
        (V2_ROOT / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    except OSError as exc:
        return CgroupSupport(None, reason=f"cgroup v2 is mounted but not delegable here ({exc.strerror})")
    return CgroupSupport(2, frozenset(wanted))


def detect() -> CgroupSupport:
    v2 = _detect_v2()
    if v2 is not None:
        return v2
    usable = frozenset(name for name, directory in _V1_CONTROLLERS.items() if _writable_v1(directory))
    if not usable:
        return CgroupSupport(None, reason="no writable cgroup controllers (run the daemon as root for hard limits)")
    swap = (V1_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()
    return CgroupSupport(1, usable, swap_limit=swap)
