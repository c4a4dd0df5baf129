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
from pathlib import Path

from boxruntime.backends import host_mounts
from boxruntime.errors import BoxSandboxError
from boxruntime.security import ResolvedMount

log = logging.getLogger(__name__)

CARRIER_NAME = "workspace"
_unreachable: list[str] = []  # why carriers do not work from this daemon, once found out


def supported() -> bool:
    return host_mounts.can_mount() and not _unreachable


def probe_name() -> str:
    """A file to create in a workspace before ``verified`` looks for it inside the sandbox."""
    return f".boxruntime-carrier-probe-{secrets.token_hex(6)}"


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


def prepare(state_dir: Path) -> Path:
    """An empty carrier for a new sandbox, to bind at the workspace path with rslave
    propagation; ``fill`` it once the sandbox runs.

    It must be empty when the sandbox starts: the engine binds whatever is mounted topmost at
    the source path, so a workspace bound here first would reach the sandbox as a copy of that
    mount, cut off from anything mounted on the carrier later.
    """
    carrier = state_dir / CARRIER_NAME
    host_mounts.make_shared(carrier)
    return carrier


def fill(carrier: Path, workspace: ResolvedMount) -> None:
    """Bind ``workspace`` on the carrier; it appears inside the running sandbox at once."""
    host_mounts.bind(workspace.host_path, carrier, workspace.read_only, staging=carrier.parent)


def swap(carrier: Path, workspace: ResolvedMount) -> None:
    """Replace the workspace the carrier holds (inside the running sandbox too) by ``workspace``.

    On failure the sandbox may be left with no workspace: its owner must discard it.
    """
    host_mounts.unmount(carrier)
    fill(carrier, workspace)
