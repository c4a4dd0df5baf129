"""Skills that can be added to a running sandbox.

Skill packages are bound (read-only) into a per-session host directory that is a *shared*
mount; the sandbox sees that directory at ``<workspace>/.skills`` through a ``rslave`` bind, so
a package bound there later — while the sandbox runs — appears inside it. Only the daemon
running as root can make these mounts; elsewhere skills are ordinary mounts fixed at creation.
"""

from __future__ import annotations

from pathlib import Path

from boxruntime.backends.common import host_mounts
from boxruntime.errors import BoxSessionConflictError
from boxruntime.models import BoxSpec, MountSpec
from boxruntime.security import SKILLS_DIR_NAME, ResolvedMount, skill_name


def skills_target(spec: BoxSpec) -> str:
    return f"{spec.mount_path.rstrip('/')}/{SKILLS_DIR_NAME}"


def split(
    spec: BoxSpec, extras: list[ResolvedMount], skills_dir: Path
) -> tuple[dict[str, ResolvedMount], list[ResolvedMount]]:
    """The skill mounts (by name) that go through the live directory, and the other mounts."""
    if not host_mounts.can_mount():
        return {}, extras
    skills: dict[str, ResolvedMount] = {}
    others = []
    for mount in extras:
        name = skill_name(spec, mount, skills_dir)
        if name is None:
            others.append(mount)
        else:
            skills[name] = mount
    return skills, others


def prepare(root: Path, skills: dict[str, ResolvedMount]) -> None:
    host_mounts.make_shared(root)
    for name, mount in skills.items():
        add(root, name, mount)


def add(root: Path, name: str, mount: ResolvedMount) -> None:
    """Bind one skill package, read-only, into the live directory ``root``."""
    host_mounts.bind(mount.host_path, root / name, read_only=True, staging=root.parent)


def additions(
    current: BoxSpec, requested: BoxSpec, resolved: list[ResolvedMount], skills_dir: Path
) -> list[tuple[MountSpec, ResolvedMount, str]]:
    """What ``requested`` adds to ``current``: (mount, its checked form, skill name) for each;
    a conflict unless every difference is a skill under ``<workspace>/.skills``."""
    by_target = {m.mount_path: m for m in resolved}
    have = current.active_extra_mounts()
    want = requested.active_extra_mounts()
    added = [m for m in want if m not in have]
    dropped = [m for m in have if m not in want]
    named = [(m, by_target[m.mount_path], skill_name(requested, by_target[m.mount_path], skills_dir)) for m in added]
    prefix = skills_target(current) + "/"
    if any(name is None for _, _, name in named) or any(
        m.mode.value != "ro" or not m.mount_path.startswith(prefix) for m in dropped
    ):
        raise BoxSessionConflictError(
            f"Box session {current.session_id} already exists with a different set of extra_mounts: only "
            f"skills under {skills_target(current)} can be added to a running session"
        )
    return [(m, r, str(name)) for m, r, name in named]
