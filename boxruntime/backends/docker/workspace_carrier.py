"""A sandbox workspace that can be changed while the sandbox runs (root daemons, Docker).

A pooled sandbox's workspace reaches it through a carrier (see host_mounts):
``<state>/workspace``, a shared mount bound at the workspace path with ``rslave``
propagation, with the real workspace (a host directory or a private one) bound on top of it
once the sandbox runs. Replacing that top mount on the host replaces it inside the sandbox. The
warm pool uses this to hand a sandbox made ahead of time to a session whose workspace is a
host directory — LangBot's usual shape, which would otherwise always need a new container.

Only pooled sandboxes use it: they have no mounts nested under the workspace path (a skill
at ``/workspace/.skills``), which a workspace bound over the carrier later would hide.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from boxruntime.backends.common import host_mounts
from boxruntime.backends.common import workspace as workspaces
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError
from boxruntime.models import BoxSpec
from boxruntime.security import ResolvedMount, prepare_host_dirs, resolve_mounts

if TYPE_CHECKING:
    from boxruntime.backends.docker.backend import DockerSandbox

log = logging.getLogger(__name__)

CARRIER_NAME = "workspace"
_unreachable: list[str] = []  # why carriers do not work from this daemon, once found out


def supported() -> bool:
    return host_mounts.can_mount() and not _unreachable


def probe_name() -> str:
    """A file to create in a workspace before ``verified`` looks for it inside the sandbox."""
    return f".boxruntime-carrier-probe-{secrets.token_hex(6)}"


async def verify(handle: DockerSandbox, workspace: Path, exists: Callable[[str], Awaitable[bool]]) -> None:
    """A file made in the workspace on the host must show at the workspace path inside the
    sandbox; ``exists`` asks the sandbox about a path there."""
    target = handle.carrier_target
    probe = workspace / probe_name()
    await anyio.to_thread.run_sync(probe.touch)
    try:
        seen = await exists(f"{target}/{probe.name}")
    finally:
        await anyio.to_thread.run_sync(lambda: probe.unlink(missing_ok=True))
    why = f"{target} in the sandbox does not show {workspace} (is the daemon in another mount namespace?)"
    verified(seen, why)


def verified(seen_inside: bool, why: str) -> None:
    """Record whether a filled carrier was seen from inside its sandbox. It is not when the
    daemon mounts in another mount namespace than the engine's (a privileged daemon in a
    container): carriers are then switched off for this daemon and the sandbox is refused."""
    if seen_inside:
        return
    if not _unreachable:
        log.warning("workspace carriers switched off: %s", why)
        _unreachable.append(why)
    raise BoxSandboxError(f"the workspace bound on the carrier does not reach the sandbox: {why}")


def attach(handle: DockerSandbox, target: str) -> Path:
    """An empty carrier for a new pooled sandbox, recorded on its handle: bind it at ``target``
    with rslave propagation, and ``fill`` it once the sandbox runs.

    It must be empty when the sandbox starts: the engine binds whatever is mounted topmost at
    the source path, so a workspace bound here first would reach the sandbox as a copy of that
    mount, cut off from anything mounted on the carrier later.
    """
    assert handle.state_dir is not None
    carrier = handle.state_dir / CARRIER_NAME
    host_mounts.make_shared(carrier)
    handle.carrier = carrier
    handle.carrier_target = target
    return carrier


def hand_over(settings: Settings, handle: DockerSandbox, spec: BoxSpec, key: str) -> bool:
    """Make a pooled sandbox session ``key``'s, with the host directory ``spec`` names as its
    workspace (checked like any mount); False when this sandbox cannot take it."""
    carrier = handle.carrier
    workspace, extras = resolve_mounts(spec, settings.mount_roots())
    if carrier is None or workspace is None or extras or spec.mount_path != handle.carrier_target:
        return False
    uid, gid = settings.sandbox_uid, settings.sandbox_gid
    prepare_host_dirs([workspace], uid, gid)
    notes: list[str] = []
    if workspaces.sandbox_identity(settings, workspace, notes) != (uid, gid):
        return False  # the pooled sandbox runs as the wrong user for this host directory
    plan = workspaces.plan(settings.data_dir, spec, key, workspace, uid, gid)
    swap(carrier, workspace)
    workspaces.release(settings.data_dir, handle.key, remove=True)  # the pool's own
    handle.key = key
    handle.adopt_workspace(plan)
    handle.notes.extend(notes)
    return True


def fill(carrier: Path, workspace: ResolvedMount) -> None:
    """Bind ``workspace`` on the carrier; it appears inside the running sandbox at once."""
    host_mounts.bind(workspace.host_path, carrier, workspace.read_only, staging=carrier.parent)


def swap(carrier: Path, workspace: ResolvedMount) -> None:
    """Replace the workspace the carrier holds (inside the running sandbox too) by ``workspace``.

    On failure the sandbox may be left with no workspace: its owner must discard it.
    """
    host_mounts.unmount(carrier)
    fill(carrier, workspace)
