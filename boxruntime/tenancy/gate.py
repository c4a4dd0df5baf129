"""The tenancy gate: LangBot 0.7's rules between a control connection's requests and the
daemon's handlers (reference §A.9, §B.2), as a thin layer the runtime never sees.

- Host-control actions (ping, health, init, admission grants …) take an optional context that
  must name the trusted instance. Each action's kind is its catalogue entry's
  (``boxruntime.models.actions``).
- Tenant actions (every other) need a context from a 0.7 client. Their session ids are mapped
  logical → physical on the way in and back on the way out; lists and counts are scoped to the
  caller's placement; the generation fence is observed before the handler and checked again
  after it.
- A connection that never identified itself (LangBot 0.5: no instance header, no context) keeps
  0.5's rules, but sees only sessions outside every workspace namespace; unless the daemon
  requires tenancy, in which case its tenant actions are refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pydantic

from boxruntime.config import host_backend_refusal
from boxruntime.errors import BoxPermissionError, BoxValidationError
from boxruntime.models import SessionDeleted
from boxruntime.models import actions as a
from boxruntime.models.action_kinds import Kind, Streamed
from boxruntime.protocol import ActionHandler, Payload, call_unary
from boxruntime.protocol.envelope import Request
from boxruntime.protocol.peer import ActionResult
from boxruntime.tenancy.fence import STALE_MESSAGE
from boxruntime.tenancy.managed import SANDBOX_ACTIONS, SPEC_ACTIONS
from boxruntime.tenancy.placement import ActionContext, Placement
from boxruntime.tenancy.scopes import LEGACY, SessionScope, to_logical
from boxruntime.tenancy.service import Tenancy
from boxruntime.tenancy.strict import check_box_spec

# LangBot 0.7's, and ours about the daemon rather than a workspace (the relay's address, LangBot
# 0.5's skill store, which 0.7 no longer has). The Peer's own ``__cancel_action`` passes too.
HOST_CONTROL_ACTIONS = a.names(Kind.HOST_CONTROL) | {"__cancel_action"}
STREAMED_ACTIONS = frozenset(action.name for action in a.ACTIONS if isinstance(action, Streamed))
# Actions that name no session: a session_id in their data is left as it is (every other is mapped).
_UNMAPPED = frozenset({a.GET_SESSIONS.name, a.STATUS.name})


class TenantGate:
    """One per control connection (the Peer's ``gate``)."""

    def __init__(self, tenancy: Tenancy, *, identified: bool, host_backend_allowed: bool) -> None:
        self._tenancy = tenancy
        # A 0.7 client: it sent the instance header, runs under LANGBOT_BOX_TRUSTED_INSTANCE_UUID
        # over stdio, or has sent a context. From then on every tenant action needs a context.
        self._identified = identified or tenancy.required
        self._host_backend_allowed = host_backend_allowed

    def __call__(self, req: Request, handler: ActionHandler) -> ActionResult:
        if req.action == a.INIT.name and not self._host_backend_allowed:
            backend = req.data.get("backend")
            refusal = host_backend_refusal(backend if isinstance(backend, str) else None, None, websocket=True)
            if refusal is not None:
                raise BoxValidationError(refusal)
        context = self._context(req)
        if req.action in HOST_CONTROL_ACTIONS:
            return handler(req.data)
        if context is None:
            if self._identified:
                raise BoxPermissionError("Box tenant action requires a trusted Workspace context")
            if req.action in STREAMED_ACTIONS:
                return handler(self._inbound(req.action, req.data, LEGACY, strict=False))
            return self._legacy(req, handler)
        placement = Placement.of(context)
        if req.action in STREAMED_ACTIONS:
            return self._stream(req, handler, placement)
        return self._fenced(req, handler, placement)

    def _context(self, req: Request) -> ActionContext | None:
        if req.context is None:
            return None
        try:
            context = ActionContext.model_validate(req.context)
        except pydantic.ValidationError as exc:
            raise BoxValidationError(f"invalid action context: {exc}") from None
        if not self._tenancy.trust.admit(context.instance_uuid, pin=True):
            raise BoxPermissionError("Box action context does not match the trusted instance")
        self._identified = True
        return context

    # ── one request ──────────────────────────────────────────────────────

    def _inbound(self, action: str, data: Payload, scope: SessionScope, strict: bool) -> Payload:
        if strict and action in SPEC_ACTIONS:
            check_box_spec(data)
        session_id = data.get("session_id")
        if isinstance(session_id, str) and action not in _UNMAPPED:
            data = {**data, "session_id": scope.physical(session_id)}
        return data

    async def _placed(self, req: Request, placement: Placement) -> Payload:
        """The request's data as the runtime gets it: under admission, a sandbox action needs a
        grant and a ready runtime, and runs on the canonical session (its spec normalised)."""
        managed = self._tenancy.managed
        if req.action in SANDBOX_ACTIONS and managed.required:
            grant = await managed.admit(placement)
            admitted = managed.admitted_request(req.action, req.data, placement, grant)
            return self._inbound(req.action, admitted, placement, strict=False)  # normalised already
        return self._inbound(req.action, req.data, placement, strict=True)

    async def _call(self, req: Request, handler: ActionHandler, scope: SessionScope, data: Payload) -> Payload:
        view = self._tenancy.views.get(req.action)
        if view is not None:
            return await view(data, scope)
        answer = await call_unary(handler, data)
        if req.action == a.DELETE_SESSION.name:
            # The id as the caller sent it.
            return a.DELETE_SESSION.response.dump(SessionDeleted(deleted=req.data["session_id"]))
        return answer

    async def _legacy(self, req: Request, handler: ActionHandler) -> Payload:
        return await self._call(req, handler, LEGACY, self._inbound(req.action, req.data, LEGACY, strict=False))

    async def _fenced(self, req: Request, handler: ActionHandler, placement: Placement) -> Payload:
        data = await self._placed(req, placement)
        fence = self._tenancy.fence
        scope = anyio.CancelScope()
        with fence.request(placement, scope):
            with scope:
                await self._tenancy.activate(placement)
                answer = await self._call(req, handler, placement, data)
            if scope.cancelled_caught or not fence.is_current(placement):
                # A newer generation arrived meanwhile: whatever this request made is retired.
                await self._tenancy.retire_stale(placement)
                raise BoxPermissionError(STALE_MESSAGE)
        mapped: Payload = to_logical(answer, placement)
        return mapped

    async def _stream(self, req: Request, handler: ActionHandler, placement: Placement) -> AsyncIterator[Payload]:
        data = await self._placed(req, placement)
        fence = self._tenancy.fence
        await self._tenancy.activate(placement)
        chunks = handler(data)
        assert isinstance(chunks, AsyncIterator)
        try:
            while True:
                scope = anyio.CancelScope()
                with fence.request(placement, scope):
                    with scope:
                        try:
                            chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                    if scope.cancelled_caught or not fence.is_current(placement):
                        raise BoxPermissionError(STALE_MESSAGE)
                yield to_logical(chunk, placement)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
