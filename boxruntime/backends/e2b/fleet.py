"""The e2b backend's dealings with the E2B server as a whole rather than with one sandbox: is
the server there with this key (``reachable``, what ``probe`` reports), which sandboxes are this
data dir's (their metadata names the machine and data dir, hashed, and the daemon instance:
``mapping.metadata``), and removing those that dead daemons left or this one made."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import Any

import anyio
from e2b import AsyncSandbox, SandboxQuery
from e2b.exceptions import AuthenticationException

from boxruntime.backends.e2b import mapping
from boxruntime.config import Settings
from boxruntime.instance import instance_alive
from boxruntime.models import BackendInfo

log = logging.getLogger(__name__)

NAME = "e2b"


async def reachable(settings: Settings) -> BackendInfo:
    """One listing with the key, within ``PROBE_TIMEOUT_SEC``: available, or why not."""
    where = mapping.where(settings)
    if not settings.e2b_api_key:
        reason = (
            "no E2B API key: set E2B_API_KEY (or box.e2b.api_key); for an E2B-compatible server that "
            "takes any key (another boxruntime without a token), any value"
        )
        return BackendInfo(name=NAME, available=False, reason=reason)
    try:
        with anyio.fail_after(mapping.PROBE_TIMEOUT_SEC):
            query = SandboxQuery(metadata={mapping.META_SITE: mapping.site_id(settings.data_dir)})
            params = mapping.api_params(settings, mapping.PROBE_TIMEOUT_SEC) | {"retries": 0}
            await AsyncSandbox.list(query=query, limit=1, **params).next_items()
    except AuthenticationException:
        return BackendInfo(name=NAME, available=False, reason=f"the E2B API at {where} refused the API key")
    except TimeoutError:
        reason = f"the E2B API at {where} did not answer within {mapping.PROBE_TIMEOUT_SEC:g} s"
        return BackendInfo(name=NAME, available=False, reason=reason)
    except Exception as exc:
        reason = f"cannot reach the E2B API at {where}: {type(exc).__name__}: {exc}"
        return BackendInfo(name=NAME, available=False, reason=reason)
    return BackendInfo(
        name=NAME, available=True, reason=f"E2B API at {where}", enforced_limits=mapping.enforced_limits(settings)
    )


async def kill(settings: Settings, sandbox_id: str) -> None:
    """End a sandbox; a failure is logged (E2B ends it at its timeout anyway)."""
    try:
        await AsyncSandbox.kill(sandbox_id, **mapping.api_params(settings))
    except Exception as exc:
        log.warning("e2b: killing sandbox %s failed (E2B ends it at its timeout): %s", sandbox_id, exc)


async def _ours(settings: Settings, **wanted: str) -> list[Any]:
    metadata = {mapping.META_SITE: mapping.site_id(settings.data_dir), **wanted}
    paginator = AsyncSandbox.list(query=SandboxQuery(metadata=metadata), limit=100, **mapping.api_params(settings))
    found: list[Any] = []
    while paginator.has_next:
        found += await paginator.next_items()
    return found


async def remove_orphans(settings: Settings, instance_id: str, spare: Collection[str] = ()) -> list[str]:
    """Kill this data dir's sandboxes whose daemon is dead, but those in ``spare`` (taken over by
    a live daemon); returns their ids. (E2B sandboxes are not taken over: nothing is spared yet.)"""
    try:
        listed = await _ours(settings)
    except Exception as exc:
        log.warning("e2b: cannot list sandboxes left by dead daemons: %s", exc)
        return []
    removed = []
    for sandbox in listed:
        owner = (sandbox.metadata or {}).get(mapping.META_INSTANCE, "")
        if owner == instance_id or sandbox.sandbox_id in spare or instance_alive(settings.data_dir, owner):
            continue
        with contextlib.suppress(Exception):
            await AsyncSandbox.kill(sandbox.sandbox_id, **mapping.api_params(settings))
            removed.append(sandbox.sandbox_id)
    return removed


async def remove_instance(settings: Settings, instance_id: str) -> list[str]:
    """Kill every sandbox the server lists as this daemon instance's; returns their ids."""
    try:
        listed = await _ours(settings, **{mapping.META_INSTANCE: instance_id})
    except Exception as exc:
        log.warning("e2b: cannot list this daemon's sandboxes: %s", exc)
        return []
    removed = []
    for sandbox in listed:
        with contextlib.suppress(Exception):
            await AsyncSandbox.kill(sandbox.sandbox_id, **mapping.api_params(settings))
            removed.append(sandbox.sandbox_id)
    return removed
