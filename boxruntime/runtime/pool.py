"""Warm pool: sandboxes made ahead of time for the default spec, handed to new sessions.

A new session whose spec a pooled sandbox satisfies (default resources, network off, no extra
mounts, no quota, the default image; a host-directory workspace where the backend can bind one
into a running sandbox, see workspace_carrier) gets one at once and the pool refills in the
background; any other spec gets a fresh sandbox. A pooled sandbox's private workspace is renamed to the
session's on hand-out, so it is indistinguishable from one made for that session; a session
whose workspace already exists on disk (files kept from an earlier daemon) is a deliberate
miss, so those files are found again. Pooled sandboxes are ordinary sandboxes of this daemon:
labelled, and removed at shutdown like the rest.

Besides the default spec, a front door may name other *shapes* it creates sessions in (E2B's
sandboxes: the workspace at /home/user). A shape is kept warm, ``size`` sandboxes of it, from the
first time a session of that shape is asked for: a daemon nobody uses that way pays nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import anyio

from boxruntime.backends.contract import Backend, SandboxHandle
from boxruntime.config import Settings
from boxruntime.errors import BoxError, BoxSandboxError
from boxruntime.models import LANGBOT_DEFAULT_IMAGE, SESSION_IDENTITY_FIELDS, BoxSpec, PoolStatus
from boxruntime.runtime.sessions import BackendProvider

log = logging.getLogger(__name__)

REFILL_RETRY_SEC = 30.0
# A session just handed out usually runs its first commands at once; starting a replacement
# sandbox in the same instant competes with them for the CPU. Refilling a moment later does not.
REFILL_DELAY_SEC = 0.5


@dataclass
class _Pooled:
    backend: Backend[Any]
    handle: SandboxHandle
    shape: int  # index into the pool's shapes; 0 is the default spec


class WarmPool:
    def __init__(self, backend: BackendProvider, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings
        self._ready: list[_Pooled] = []
        self._filling: dict[int, int] = {}
        self._extra_shapes: list[BoxSpec] = []
        self._wanted = {0}  # shapes kept warm: the default always, the others once asked for
        self._wake = anyio.Event()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return self._settings.pool_size

    def status(self) -> PoolStatus:
        return PoolStatus(size=self.size, ready=len(self._ready), hits=self.hits, misses=self.misses)

    def template(self) -> BoxSpec:
        return BoxSpec(session_id="warm-pool", image=self._settings.default_image)

    def add_shape(self, spec: BoxSpec) -> None:
        """Also keep sandboxes of ``spec``'s shape (default image), once one is asked for."""
        self._extra_shapes.append(spec.model_copy(update={"session_id": "warm-pool", "cmd": ""}))

    def _shapes(self) -> list[BoxSpec]:
        default = self.template()
        return [default, *(s.model_copy(update={"image": default.image}) for s in self._extra_shapes)]

    def serves(self, backend: Backend[Any], spec: BoxSpec) -> bool:
        return self._shape_of(backend, spec) is not None

    def _shape_of(self, backend: Backend[Any], spec: BoxSpec) -> int | None:
        for index, template in enumerate(self._shapes()):
            if self._fits(backend, spec, template):
                return index
        return None

    def _fits(self, backend: Backend[Any], spec: BoxSpec, template: BoxSpec) -> bool:
        skipped = {"image", "persistent"}  # persistence is the session's, not the sandbox's
        if backend.swaps_workspace():
            skipped |= {"host_path", "host_path_mode"}  # adopt() binds the host directory in
        for name in SESSION_IDENTITY_FIELDS:
            if name not in skipped and getattr(spec, name) != getattr(template, name):
                return False
        if spec.active_extra_mounts():
            return False
        # nsjail ignores images; LangBot's default name means our default image.
        return backend.name == "nsjail" or spec.image in (self._settings.default_image, LANGBOT_DEFAULT_IMAGE)

    async def take(self, backend: Backend[Any], spec: BoxSpec, key: str) -> SandboxHandle | None:
        """A ready sandbox for ``spec`` as session ``key``, or None (a miss)."""
        if self.size <= 0:
            return None
        self._wake.set()  # a hand-out or a miss: either way, time to look at the pool
        shape = self._shape_of(backend, spec)
        if shape is not None:
            self._wanted.add(shape)
        entry = next((e for e in self._ready if e.backend is backend and e.shape == shape), None)
        if entry is None or shape is None:
            self.misses += 1
            return None
        try:
            adopted = backend.adopt(entry.handle, spec, key)
        except BoxSandboxError as exc:
            # Changed half-way (a workspace that would not mount): never hand it out or keep it.
            log.warning("warm pool: dropping a sandbox that could not be handed out: %s", exc)
            self._ready.remove(entry)
            with anyio.CancelScope(shield=True):
                await entry.backend.stop(entry.handle)
            adopted = False
        if not adopted:
            self.misses += 1
            return None
        self._ready.remove(entry)
        self.hits += 1
        return entry.handle

    async def run(self) -> None:
        """Keep ``size`` sandboxes ready; runs until its owner cancels it."""
        while True:
            try:
                await self._fill()
            except Exception as exc:  # a refill failure must never take the daemon down
                if isinstance(exc, BoxError):
                    log.warning("warm pool could not make a sandbox, retrying in %.0f s: %s", REFILL_RETRY_SEC, exc)
                else:
                    log.exception("warm pool refill failed unexpectedly; retrying in %.0f s", REFILL_RETRY_SEC)
                with anyio.move_on_after(REFILL_RETRY_SEC):
                    await self._wait()
                continue
            await self._wait()

    async def _wait(self) -> None:
        await self._wake.wait()
        await anyio.sleep(REFILL_DELAY_SEC)
        self._wake = anyio.Event()

    async def _fill(self) -> None:
        shapes = self._shapes()
        for shape in sorted(self._wanted):
            while sum(1 for e in self._ready if e.shape == shape) + self._filling.get(shape, 0) < self.size:
                backend = await self._backend()
                self._filling[shape] = self._filling.get(shape, 0) + 1
                try:
                    handle = await backend.start(shapes[shape], f"pool-{secrets.token_hex(6)}", pooled=True)
                finally:
                    self._filling[shape] -= 1
                self._ready.append(_Pooled(backend, handle, shape))
                log.info("warm pool: %d/%d ready (shape %d)", len(self._ready), self.size * len(self._wanted), shape)

    async def drain(self) -> None:
        """Remove every pooled sandbox (backend reselected, or daemon exit)."""
        ready, self._ready = self._ready, []
        with anyio.CancelScope(shield=True):
            for entry in ready:
                await entry.backend.stop(entry.handle)
        self._wake.set()  # refill, from whichever backend is selected next
