"""Backend[Any] construction and selection (reference §D.2).

``local`` tries Docker, then nsjail; an explicit name never falls back. The unsafe ``host``
backend is never a candidate of ``local``: only its name selects it. Nor is ``gvisor``: it is
a choice with costs (slower commands and creation, a sandbox ended as a whole when it runs out
of memory, no network where runsc runs with --network=none) that the operator makes by name.
When nothing is usable the error lists every candidate and why, so the user knows what to install.
"""

from __future__ import annotations

import logging
from typing import Any

from boxruntime.backends.contract import Backend
from boxruntime.config import Settings
from boxruntime.errors import BoxBackendUnavailableError
from boxruntime.models import BackendInfo
from boxruntime.models import backend_names as names

log = logging.getLogger(__name__)

LOCAL_CANDIDATES = ("docker", "nsjail")  # never an unsafe one (host) by default


def make_backend(name: str, settings: Settings, instance_id: str) -> Backend[Any]:
    if name == "docker":
        from boxruntime.backends.docker.backend import DockerBackend

        return DockerBackend(settings, instance_id)
    if name == "gvisor":
        from boxruntime.backends.gvisor.backend import GvisorBackend

        return GvisorBackend(settings, instance_id)
    if name == "nsjail":
        from boxruntime.backends.nsjail.backend import NsjailBackend

        return NsjailBackend(settings, instance_id)
    if name == "host":
        from boxruntime.backends.host.backend import HostBackend

        return HostBackend(settings, instance_id)
    raise BoxBackendUnavailableError(f"the {name} backend is not part of this build yet")


def candidates(settings: Settings) -> tuple[str, ...]:
    return LOCAL_CANDIDATES if settings.backend == "local" else (settings.backend,)


async def probe_all(settings: Settings, instance_id: str) -> list[BackendInfo]:
    """Availability of every backend, for ``boxruntime doctor``."""
    infos = []
    for name in (*names.IMPLEMENTED, *names.NOT_IMPLEMENTED):
        try:
            backend = make_backend(name, settings, instance_id)
        except BoxBackendUnavailableError as exc:
            infos.append(BackendInfo(name=name, available=False, reason=str(exc)))
            continue
        infos.append(await backend.probe())
        await backend.close()
    return infos


async def select_backend(settings: Settings, instance_id: str) -> tuple[Backend[Any], BackendInfo]:
    reasons = []
    for name in candidates(settings):
        try:
            backend = make_backend(name, settings, instance_id)
        except BoxBackendUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        info = await backend.probe()
        if info.available:
            log.info("selected the %s backend", name)
            return backend, info
        reasons.append(f"{name}: {info.reason}")
        await backend.close()
    raise BoxBackendUnavailableError(
        f"no sandbox backend available for backend={settings.backend!r}: " + "; ".join(reasons)
    )
