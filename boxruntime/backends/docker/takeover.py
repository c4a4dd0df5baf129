"""A container a dead daemon left, described and found again (the Docker side of
``Backend.describe`` and ``recover``; the agent's side is agent/takeover.py).

The description names the container and what the daemon kept about it: paths under its state
directory (a live-skills root, a workspace carrier) are found again under the state directory's
new place. A container is taken over only if it carries this data dir's label and runs (or is
paused: it is unpaused).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

if TYPE_CHECKING:
    from boxruntime.backends.docker.backend import DockerSandbox

LABEL_DATA_DIR = "boxruntime.data_dir"


def describe(handle: DockerSandbox) -> dict[str, Any]:
    return {
        "container_id": handle.container_id,
        "resolved_image": handle.resolved_image,
        "engine_exec": handle.engine_exec,
        "skills_root": str(handle.skills_root) if handle.skills_root else None,
        "carrier": str(handle.carrier) if handle.carrier else None,
        "carrier_target": handle.carrier_target,
    }


def restore(handle: DockerSandbox, described: Mapping[str, Any], state: Path | None) -> None:
    """Fill ``handle`` in from ``described``; paths under the old state directory move to ``state``."""
    handle.container_id = described.get("container_id")
    handle.resolved_image = described.get("resolved_image")
    handle.engine_exec = bool(described.get("engine_exec"))
    handle.carrier_target = described.get("carrier_target")
    old = described.get("state_dir")
    if state is None or not isinstance(old, str):
        return
    for attr in ("skills_root", "carrier"):
        value = described.get(attr)
        if isinstance(value, str) and Path(value).is_relative_to(old):
            setattr(handle, attr, state / Path(value).relative_to(old))


def running_or_paused(engine: docker.DockerClient, name: str, data_dir: Path) -> str | None:
    """The container's state if it is one of this data dir's and running or paused."""
    try:
        container = engine.containers.get(name)
    except docker.errors.NotFound:
        return None
    if container.labels.get(LABEL_DATA_DIR) != str(data_dir.resolve()):
        return None
    status = str(container.status)
    return status if status in ("running", "paused") else None
