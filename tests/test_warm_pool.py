"""WarmPool hand-out rules over the in-memory backend: what it serves, and a hand-out that fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from boxruntime.backends.contract import Backend, SandboxHandle
from boxruntime.config import Settings
from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.models import BoxSpec
from boxruntime.runtime.pool import WarmPool
from tests.fakes import FakeBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SwappingBackend(FakeBackend):
    """A backend that binds host workspaces into pooled sandboxes; ``adopt_error`` makes that fail."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.adopt_error: Exception | None = None
        self.adopted: list[tuple[str, str]] = []  # (sandbox id, new key)

    def swaps_workspace(self) -> bool:
        return True

    def adopt(self, handle: SandboxHandle, spec: BoxSpec, key: str) -> bool:
        if self.adopt_error is not None:
            raise self.adopt_error
        self.adopted.append((handle.sandbox_id, key))
        handle.key = key
        return True


async def filled(backend: Backend[Any], size: int = 1) -> WarmPool:
    settings = backend.settings.model_copy(update={"pool_size": size})

    async def provider() -> Backend[Any]:
        return backend

    pool = WarmPool(provider, settings)
    with anyio.fail_after(10):
        await pool._fill()
    assert pool.status().ready == size
    return pool


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


async def test_host_workspace_specs_are_served_only_where_the_backend_can_bind_them(settings: Settings) -> None:
    spec = BoxSpec(session_id="chat", host_path="/srv/chat", host_path_mode="rw")
    plain = await filled(FakeBackend(settings))
    assert not plain.serves(plain._ready[0].backend, spec)
    swapping = SwappingBackend(settings)
    pool = await filled(swapping)
    assert pool.serves(swapping, spec)
    # The workspace path itself, resources and images still have to match the pooled sandbox.
    assert not pool.serves(swapping, spec.model_copy(update={"mount_path": "/data"}))
    assert not pool.serves(swapping, spec.model_copy(update={"memory_mb": 256}))
    handle = await pool.take(swapping, spec, "chat-key")
    assert handle is not None and swapping.adopted == [(handle.sandbox_id, "chat-key")]
    assert (pool.hits, pool.misses) == (1, 0)


async def test_a_sandbox_that_fails_its_hand_out_is_removed_not_kept(settings: Settings) -> None:
    backend = SwappingBackend(settings)
    pool = await filled(backend)
    pooled = pool._ready[0].handle.sandbox_id
    backend.adopt_error = BoxSandboxError("mount failed half-way")
    spec = BoxSpec(session_id="chat", host_path="/srv/chat", host_path_mode="rw")
    assert await pool.take(backend, spec, "chat-key") is None
    assert pool.status().ready == 0 and pool.misses == 1
    assert backend.stopped == [(pooled, False)]  # removed, never handed to anyone


async def test_a_bad_request_leaves_the_pool_as_it_was(settings: Settings) -> None:
    backend = SwappingBackend(settings)
    pool = await filled(backend)
    backend.adopt_error = BoxValidationError("host_path /etc is not allowed")
    spec = BoxSpec(session_id="chat", host_path="/etc", host_path_mode="rw")
    with pytest.raises(BoxValidationError):
        await pool.take(backend, spec, "chat-key")
    assert pool.status().ready == 1 and backend.stopped == []
