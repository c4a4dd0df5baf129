"""The daemon's tenancy state and the views that differ per tenant: one ``Tenancy`` per daemon,
shared by every control connection's gate and by the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from boxruntime.action_table import ActionTable, serve_scoped
from boxruntime.config import ensure_default_workspace
from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from boxruntime.models import (
    BackendInfo,
    Empty,
    Initialized,
    ManagedBackendInfo,
    ReadinessReport,
    RuntimeStatus,
    SessionList,
    StatusCapacity,
    StatusLimits,
    StorageAnalysis,
    TenantRuntimeStatus,
)
from boxruntime.models import actions as a
from boxruntime.protocol import Payload
from boxruntime.runtime.core import BoxRuntime
from boxruntime.runtime.sessions import Session
from boxruntime.tenancy import storage
from boxruntime.tenancy.admission import Retirement
from boxruntime.tenancy.fence import GenerationFence
from boxruntime.tenancy.managed import ManagedSandboxes
from boxruntime.tenancy.placement import Placement
from boxruntime.tenancy.scopes import LEGACY, SessionScope
from boxruntime.tenancy.trust import TrustedInstance

log = logging.getLogger(__name__)

# A view on the wire: the request's data and the caller's scope in, the answer's data out.
View = Callable[[Payload, SessionScope], Awaitable[Payload]]


class Tenancy:
    def __init__(self, runtime: BoxRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.trust = TrustedInstance(self.settings.trusted_instance)
        self.fence = GenerationFence(lambda: self.settings.max_admission_records)
        self.managed = ManagedSandboxes(runtime, self.trust, self.fence, self.retire)
        try:
            ensure_default_workspace(self.settings)
        except BoxValidationError as exc:
            log.warning("%s", exc)  # box_init may still fix it; LangBot's handshake will say so
        # The actions whose answer depends on who asks; the gate calls them with the scope.
        self.views: dict[str, View] = {
            a.GET_SESSIONS.name: serve_scoped(a.GET_SESSIONS, self.list_sessions),
            a.STATUS.name: serve_scoped(a.STATUS, self.status),
            a.STORAGE_ANALYSIS.name: serve_scoped(a.STORAGE_ANALYSIS, self.storage_analysis),
        }

    def actions(self, table: ActionTable) -> ActionTable:
        """LangBot 0.7's actions and rules, on top of the daemon's ``table`` (changed in place):
        the views (a request without a context gets the view of the sessions outside every
        workspace; the gate scopes the others), admission grants, the shared-workspace probe,
        and health and backend info as readiness under admission."""

        async def sessions(request: Empty) -> SessionList:
            return await self.list_sessions(request, LEGACY)

        async def status(request: Empty) -> RuntimeStatus:
            return await self.status(request, LEGACY)

        async def storage_analysis(request: Empty) -> StorageAnalysis:
            return await self.storage_analysis(request, LEGACY)

        init = table.handler(a.INIT)

        async def box_init(config: dict[str, Any]) -> Initialized:
            answer = await init(config)
            self.managed.admission.refresh()
            self.managed.readiness.forget()
            ensure_default_workspace(self.settings)
            return answer

        standard_health = table.handler(a.HEALTH)
        standard_backend_info = table.handler(a.BACKEND_INFO)

        async def health(request: Empty) -> ReadinessReport | BackendInfo:
            if self.managed.required:
                return await self.managed.health(request)
            return await standard_health(request)

        async def backend_info(request: Empty) -> ManagedBackendInfo | BackendInfo:
            if self.managed.required:
                return await self.managed.backend_info(request)
            return await standard_backend_info(request)

        table.replace(a.GET_SESSIONS, sessions)
        table.replace(a.STATUS, status)
        table.unary(a.STORAGE_ANALYSIS, storage_analysis)
        table.replace(a.INIT, box_init)
        table.replace(a.HEALTH, health)
        table.replace(a.BACKEND_INFO, backend_info)
        table.unary(a.UPSERT_ADMISSION_GRANT, self.managed.upsert_grant)
        table.unary(a.REVOKE_ADMISSION_GRANT, self.managed.revoke_grant)
        table.unary(a.VERIFY_SHARED_WORKSPACE, self.managed.verify_shared_workspace)
        return table

    @property
    def required(self) -> bool:
        return self.settings.tenancy_required

    # ── the fence's effects ──────────────────────────────────────────────

    async def activate(self, placement: Placement) -> None:
        """Observe a request's placement; when it is newer, retire the older ones first."""
        if self.fence.observe(placement):
            await self.retire_stale(placement)
        self.fence.require_current(placement)

    async def retire_stale(self, placement: Placement) -> None:
        """Delete the sessions of the workspace's older placements (their relays close with the
        processes; the requests in flight were cancelled by the fence)."""
        ids = [s.session_id for s in self.runtime.sessions.sessions()]
        await self.fence.retire(placement, ids, self._delete_quietly)

    async def retire(self, retirement: Retirement) -> None:
        """End the sessions of a workspace (every placement), but the one it keeps."""
        for session in self.runtime.sessions.sessions():
            sid = session.session_id
            if sid.startswith(retirement.workspace.prefix) and sid != retirement.keep:
                await self._delete_quietly(sid)

    def close(self) -> None:
        """After the runtime removed every sandbox: release what the tenancy holds on the host."""
        self.managed.close()

    async def run(self) -> None:
        """The tenancy's background work (expiring admission grants); until cancelled."""
        await self.managed.run_expiry()

    async def _delete_quietly(self, session_id: str) -> None:
        try:
            await self.runtime.delete_session(session_id)
            log.info("session %s retired (a newer placement generation, or its admission grant ended)", session_id)
        except BoxSessionNotFoundError:
            pass  # another request retired it first

    # ── views ────────────────────────────────────────────────────────────

    def _sessions(self, scope: SessionScope) -> list[Session]:
        return [s for s in self.runtime.sessions.sessions() if scope.owns(s.session_id) and not s.closing]

    async def list_sessions(self, _: Empty, scope: SessionScope) -> SessionList:
        # Physical ids: the gate maps every session_id of the answer back to the caller's.
        return SessionList(sessions=[s.info() for s in self._sessions(scope)])

    async def status(self, _: Empty, scope: SessionScope) -> RuntimeStatus:
        grant = None
        if isinstance(scope, Placement) and self.managed.required:
            grant = await self.managed.admit(scope)
        status = await self.runtime.status()
        mine = self._sessions(scope)
        status.active_sessions = len(mine)
        status.managed_processes = sum(1 for s in mine for p in s.processes.values() if p.running)
        if scope is LEGACY:
            return status
        # LangBot 0.7's additions.
        settings = self.settings
        limits = StatusLimits(
            max_sessions=settings.max_sessions,
            max_managed_processes=settings.max_managed_processes,
            max_completed_processes=settings.max_completed_processes,
            max_admission_records=settings.max_admission_records,
            max_rpc_file_bytes=settings.max_rpc_file_bytes,
        )
        workspace = scope.workspace if isinstance(scope, Placement) else None
        used = sum(
            1 for s in self.runtime.sessions.sessions() if workspace and s.session_id.startswith(workspace.prefix)
        )
        total = len(self.runtime.sessions)
        limit = settings.max_sessions if grant is None else min(settings.max_sessions, grant.max_sessions)
        remaining = max(0, min(limit - used, settings.max_sessions - total))
        capacity = StatusCapacity(limit=limit, used=used, remaining=remaining)
        return TenantRuntimeStatus(**dict(status), limits=limits, capacity=capacity)

    def tenant_directory(self, placement: Placement) -> Path | None:
        root = self.settings.tenant_root
        return None if root is None else root / placement.workspace.namespace

    async def storage_analysis(self, _: Empty, scope: SessionScope) -> StorageAnalysis:
        placement = scope if isinstance(scope, Placement) else None
        directory = self.tenant_directory(placement) if placement is not None else None
        return await storage.analyse(directory, self._sessions(scope))
