"""The daemon's tenancy state and the views that differ per tenant: one ``Tenancy`` per daemon,
shared by every control connection's gate and by the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from boxruntime.config import ensure_default_workspace
from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from boxruntime.models import SessionInfo
from boxruntime.payloads import dump
from boxruntime.protocol import ActionHandler, Payload, call_unary
from boxruntime.runtime.core import BoxRuntime
from boxruntime.runtime.sessions import Session
from boxruntime.tenancy import storage
from boxruntime.tenancy.admission import Retirement
from boxruntime.tenancy.fence import GenerationFence
from boxruntime.tenancy.managed import ManagedSandboxes
from boxruntime.tenancy.placement import Placement
from boxruntime.tenancy.scopes import LEGACY, SessionScope, to_logical
from boxruntime.tenancy.trust import TrustedInstance

log = logging.getLogger(__name__)

View = Callable[[Payload, SessionScope], Awaitable[Payload]]
View1 = Callable[[Payload], Awaitable[Payload]]


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
        self.views: dict[str, View] = {
            "box_get_sessions": self.list_sessions,
            "box_status": self.status,
            "box_get_storage_analysis": self.storage_analysis,
        }

    def actions(self, base: dict[str, ActionHandler]) -> dict[str, ActionHandler]:
        """LangBot 0.7's actions and rules, on top of the daemon's ``base`` table: the views (a
        request without a context gets the view of the sessions outside every workspace; the
        gate scopes the others), admission grants, the shared-workspace probe, and health and
        backend info as readiness under admission."""

        def unscoped(view: View) -> ActionHandler:
            async def handler(data: Payload) -> Payload:
                return await view(data, LEGACY)

            return handler

        def readiness_under_admission(managed: View1, standard: ActionHandler) -> ActionHandler:
            async def handler(data: Payload) -> Payload:
                if self.managed.required:
                    return await managed(data)
                return await call_unary(standard, data)

            return handler

        init = base["box_init"]

        async def box_init(data: Payload) -> Payload:
            answer = await call_unary(init, data)
            self.managed.admission.refresh()
            self.managed.readiness.forget()
            ensure_default_workspace(self.settings)
            return answer

        return {
            **base,
            **{name: unscoped(view) for name, view in self.views.items()},
            "box_init": box_init,
            "box_health": readiness_under_admission(self.managed.health, base["box_health"]),
            "box_get_backend_info": readiness_under_admission(self.managed.backend_info, base["box_get_backend_info"]),
            "box_upsert_sandbox_admission_grant": self.managed.upsert_grant,
            "box_revoke_sandbox_admission_grant": self.managed.revoke_grant,
            "box_verify_shared_workspace": self.managed.verify_shared_workspace,
        }

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

    async def list_sessions(self, _: Payload, scope: SessionScope) -> Payload:
        infos: list[SessionInfo] = [s.info() for s in self._sessions(scope)]
        return {"sessions": [to_logical(dump(info), scope) for info in infos]}

    async def status(self, _: Payload, scope: SessionScope) -> Payload:
        grant = None
        if isinstance(scope, Placement) and self.managed.required:
            grant = await self.managed.admit(scope)
        status = await self.runtime.status()
        mine = self._sessions(scope)
        status.active_sessions = len(mine)
        status.managed_processes = sum(1 for s in mine for p in s.processes.values() if p.running)
        payload = dump(status)
        if scope is not LEGACY:  # LangBot 0.7's additions
            settings = self.settings
            payload["limits"] = {
                "max_sessions": settings.max_sessions,
                "max_managed_processes": settings.max_managed_processes,
                "max_completed_processes": settings.max_completed_processes,
                "max_admission_records": settings.max_admission_records,
                "max_rpc_file_bytes": settings.max_rpc_file_bytes,
            }
            workspace = scope.workspace if isinstance(scope, Placement) else None
            used = sum(
                1 for s in self.runtime.sessions.sessions() if workspace and s.session_id.startswith(workspace.prefix)
            )
            total = len(self.runtime.sessions)
            limit = settings.max_sessions if grant is None else min(settings.max_sessions, grant.max_sessions)
            payload["capacity"] = {
                "limit": limit,
                "used": used,
                "remaining": max(0, min(limit - used, settings.max_sessions - total)),
            }
        return payload

    def tenant_directory(self, placement: Placement) -> Path | None:
        root = self.settings.tenant_root
        return None if root is None else root / placement.workspace.namespace

    async def storage_analysis(self, _: Payload, scope: SessionScope) -> Payload:
        placement = scope if isinstance(scope, Placement) else None
        directory = self.tenant_directory(placement) if placement is not None else None
        return await storage.analyse(directory, self._sessions(scope))
