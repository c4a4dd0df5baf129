"""Mount policy and the container hardening every sandbox gets.

Every host path a request names (``host_path`` and each of ``extra_mounts``) is resolved with
realpath, must lie under an allowed root, and must stay clear of the denylist. LangBot's Box
only had the denylist, missed ``/`` and skipped extra mounts (reference §D.11, §G.10; seed S5).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from boxruntime.errors import BoxValidationError
from boxruntime.models import BoxSpec, HostMountMode

# A path equal to one of these, or inside one, is never mounted. "/" only as itself.
DENIED_TREES: tuple[str, ...] = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/root",
    "/boot",
    "/run",
    "/var/run",
    "/var/lib/docker",
)
DENIED_EXACT: tuple[str, ...] = ("/",)
DOCKER_SOCKETS: tuple[str, ...] = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True, slots=True)
class ResolvedMount:
    host_path: str  # realpath: what is handed to the backend
    mount_path: str
    read_only: bool


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _denied_reason(real: str) -> str | None:
    if real in DENIED_EXACT:
        return f"{real} is the host's root"
    for tree in DENIED_TREES:
        if _inside(real, tree):
            return f"it is inside {tree}"
    for sock in DOCKER_SOCKETS:
        if real == os.path.realpath(sock):
            return "it is the Docker socket"
    return None


def check_host_path(path: str, roots: Sequence[Path], field: str) -> str:
    """The realpath of ``path`` if it may be mounted; otherwise BoxValidationError."""
    if "\0" in path:
        raise BoxValidationError(f"{field} must not contain NUL bytes")
    real = os.path.realpath(path)
    reason = _denied_reason(real)
    if reason is not None:
        shown = path if real == path else f"{path} (resolves to {real})"
        raise BoxValidationError(f"{field} {shown} is blocked for security: {reason}")
    real_roots = [os.path.realpath(root) for root in roots]
    if not any(_inside(real, root) for root in real_roots):
        shown = path if real == path else f"{path} (resolves to {real})"
        allowed = ", ".join(real_roots) or "(none configured)"
        raise BoxValidationError(
            f"{field} {shown} is outside the allowed mount roots ({allowed}); "
            "add its parent with --allow-mount-root or box_init local.allowed_mount_roots"
        )
    return real


def resolve_mounts(spec: BoxSpec, roots: Sequence[Path]) -> tuple[ResolvedMount | None, list[ResolvedMount]]:
    """Check every host mount of ``spec``; return the workspace mount and the extra mounts."""
    workspace: ResolvedMount | None = None
    if spec.has_host_mount():
        assert spec.host_path is not None
        real = check_host_path(spec.host_path, roots, "host_path")
        workspace = ResolvedMount(real, spec.mount_path, spec.host_path_mode == HostMountMode.READ_ONLY)
    extras: list[ResolvedMount] = []
    targets = {spec.mount_path}
    for index, mount in enumerate(spec.extra_mounts):
        if mount.mode == HostMountMode.NONE:
            continue
        real = check_host_path(mount.host_path, roots, f"extra_mounts[{index}].host_path")
        if mount.mount_path in targets:
            raise BoxValidationError(f"extra_mounts[{index}].mount_path {mount.mount_path} is used twice")
        targets.add(mount.mount_path)
        extras.append(ResolvedMount(real, mount.mount_path, mount.mode == HostMountMode.READ_ONLY))
    return workspace, extras


SKILLS_DIR_NAME = ".skills"


def skill_name(spec: BoxSpec, mount: ResolvedMount, skills_dir: Path) -> str | None:
    """The skill a mount provides, if it is one: a read-only package from the skills root at
    ``<workspace>/.skills/<name>``; else None."""
    prefix = f"{spec.mount_path.rstrip('/')}/{SKILLS_DIR_NAME}/"
    name = mount.mount_path[len(prefix) :] if mount.mount_path.startswith(prefix) else ""
    if mount.read_only and name and "/" not in name and _inside(mount.host_path, os.path.realpath(skills_dir)):
        return name
    return None


def prepare_host_dirs(mounts: Iterable[ResolvedMount], uid: int, gid: int) -> list[str]:
    """Create missing read-write mount sources (as LangBot 0.7 does), owned by the sandbox user;
    read-only ones must exist. Returns the directories it created."""
    created = []
    for mount in mounts:
        if os.path.exists(mount.host_path):
            continue
        if mount.read_only:
            raise BoxValidationError(f"read-only mount source {mount.host_path} does not exist")
        os.makedirs(mount.host_path, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chown(mount.host_path, uid, gid)
        created.append(mount.host_path)
    return created


# Hardening that every Docker sandbox gets, whatever the request says.
CONTAINER_CAP_DROP = ["ALL"]
CONTAINER_SECURITY_OPT = ["no-new-privileges:true"]
