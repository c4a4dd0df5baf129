"""A ``boxruntime serve`` process for E2B's own SDK to talk to, set up the way a user does:
``E2B_API_URL`` and ``E2B_SANDBOX_URL`` at the daemon, ``E2B_API_KEY`` its token (or anything
when it has none)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from integration_tests.daemon import Daemon, sandboxes_of, start_daemon


@dataclass
class E2BSite:
    daemon: Daemon
    backend: str
    api_key: str

    def env(self) -> dict[str, str]:
        url = self.daemon.http
        return {"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": self.api_key}


@contextlib.contextmanager
def e2b_site(data_dir: Path, backend: str, with_token: bool) -> Iterator[E2BSite]:
    """A daemon on ``backend`` with a warm pool; on the way out it must leave no sandbox."""
    token = secrets.token_urlsafe(32) if with_token else None
    daemon = start_daemon(data_dir, "--backend", backend, token=token, env={"BOXRUNTIME_POOL_SIZE": "2"})
    try:
        yield E2BSite(daemon, backend, token or "any-key-will-do")
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]
        leftovers = sandboxes_of(backend, data_dir)
        assert leftovers == [], f"daemon left sandboxes behind: {leftovers}"
