"""E2B sandboxes as ordinary boxruntime sessions, and the little E2B needs beyond a session.

An E2B sandbox ``ID`` is the session ``e2b-ID``: created through the runtime (warm pool,
limits, capacity), listed, reaped and removed like any other. Its E2B timeout is the session's
deadline. What is kept here is only what E2B has and a session has not: the template name,
metadata, the sandbox-wide environment, the envd access token, and the E2B side of its
processes and watchers. It goes when the session goes, however that happens.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import string
from dataclasses import dataclass, field

from boxruntime.backends.contract import Watch
from boxruntime.edges.e2b.api_models import NewSandbox, SandboxCreated, SandboxDetail, SandboxMetric
from boxruntime.edges.e2b.envd_messages import ProcessConfig
from boxruntime.errors import BoxSessionNotFoundError
from boxruntime.models import BoxSpec, NetworkMode, utcnow
from boxruntime.payloads import parse
from boxruntime.runtime.core import BoxRuntime
from boxruntime.runtime.sessions import Session

log = logging.getLogger(__name__)

# What we implement of envd, as the SDK reads it (e2b/envd/versions.py): 0.5.7 turns on
# octet-stream and gzip uploads; 0.6.2 would mean file metadata (xattrs), which we lack.
ENVD_VERSION = "0.6.1"
USER_NAME = "user"
USER_HOME = "/home/user"
DEFAULT_TEMPLATE = "base"
DEFAULT_TIMEOUT_SEC = 300
SESSION_PREFIX = "e2b-"
CLIENT_ID = "boxruntime"
_ID_ALPHABET = string.ascii_lowercase + string.digits


class SandboxNotFound(LookupError):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} not found")
        self.sandbox_id = sandbox_id


@dataclass(eq=False)
class E2BSandbox:
    sandbox_id: str
    template_id: str
    started_at: dt.datetime
    internet: bool
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    access_token: str | None = None
    processes: dict[int, tuple[ProcessConfig, str | None]] = field(default_factory=dict)  # pid -> config, tag
    watchers: dict[str, Watch] = field(default_factory=dict)
    cpu_sample: tuple[float, dt.datetime] | None = None  # the last metrics' CPU seconds, and when

    @property
    def session_id(self) -> str:
        return SESSION_PREFIX + self.sandbox_id


def sandbox_spec(session_id: str, image: str, internet: bool) -> BoxSpec:
    """A session as E2B's ``base`` template has it: the user's home is the writable workspace."""
    network = NetworkMode.ON if internet else NetworkMode.OFF
    # A template id is the caller's: one that is no image reference is a BoxValidationError (400).
    fields = {"session_id": session_id, "image": image, "mount_path": USER_HOME, "workdir": USER_HOME}
    return parse(BoxSpec, {**fields, "network": network})


class Sandboxes:
    def __init__(self, runtime: BoxRuntime, token_required: bool) -> None:
        self._runtime = runtime
        self._token_required = token_required
        self._by_id: dict[str, E2BSandbox] = {}
        runtime.sessions.on_remove.append(self._session_removed)
        runtime.pool.add_shape(sandbox_spec("warm-pool", runtime.settings.default_image, internet=False))

    @property
    def runtime(self) -> BoxRuntime:
        return self._runtime

    def image_of(self, template_id: str) -> str:
        """``base`` is the daemon's default image; any other template names an image."""
        return self._runtime.settings.default_image if template_id == DEFAULT_TEMPLATE else template_id

    async def create(self, body: NewSandbox) -> E2BSandbox:
        sandbox_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        sandbox = E2BSandbox(
            sandbox_id=sandbox_id,
            template_id=body.template_id,
            started_at=utcnow(),
            internet=bool(body.allow_internet_access),  # off unless asked: boxruntime's default
            metadata=dict(body.metadata or {}),
            env_vars=dict(body.env_vars or {}),
            # An open envd (``secure: false``, SDKs up to 2.50) only where the daemon itself is
            # open: behind a token, code must not run for whoever merely knows a sandbox id.
            access_token=None if body.secure is False and not self._token_required else secrets.token_urlsafe(24),
        )
        spec = sandbox_spec(sandbox.session_id, self.image_of(body.template_id), sandbox.internet)
        self._by_id[sandbox_id] = sandbox  # before the session exists: its removal hook finds it
        try:
            await self._runtime.create_session(spec)
        except BaseException:
            self._by_id.pop(sandbox_id, None)
            raise
        timeout = DEFAULT_TIMEOUT_SEC if body.timeout is None else body.timeout
        self._runtime.sessions.set_deadline(sandbox.session_id, utcnow() + dt.timedelta(seconds=timeout))
        log.info("e2b: sandbox %s created (template %s)", sandbox_id, body.template_id)
        return sandbox

    def get(self, sandbox_id: str) -> E2BSandbox:
        sandbox = self._by_id.get(sandbox_id)
        if sandbox is None or self._session(sandbox) is None:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    def _session(self, sandbox: E2BSandbox) -> Session | None:
        try:
            return self._runtime.sessions.get(sandbox.session_id)
        except BoxSessionNotFoundError:
            return None

    def session(self, sandbox: E2BSandbox) -> Session:
        session = self._session(sandbox)
        if session is None:
            raise SandboxNotFound(sandbox.sandbox_id)
        return session

    def all(self) -> list[E2BSandbox]:
        return [s for s in self._by_id.values() if self._session(s) is not None]

    async def kill(self, sandbox_id: str) -> None:
        sandbox = self.get(sandbox_id)
        await self._runtime.delete_session(sandbox.session_id)

    def set_timeout(self, sandbox: E2BSandbox, seconds: int) -> None:
        self._runtime.sessions.set_deadline(sandbox.session_id, utcnow() + dt.timedelta(seconds=seconds))

    def extend(self, sandbox: E2BSandbox, seconds: int) -> None:
        """Keep it at least ``seconds`` from now; never shorten (connect, refresh)."""
        wanted = utcnow() + dt.timedelta(seconds=seconds)
        current = self.session(sandbox).expires_at
        if current is None or current < wanted:
            self._runtime.sessions.set_deadline(sandbox.session_id, wanted)

    def created(self, sandbox: E2BSandbox) -> SandboxCreated:
        return SandboxCreated(
            template_id=sandbox.template_id,
            sandbox_id=sandbox.sandbox_id,
            client_id=CLIENT_ID,
            envd_version=ENVD_VERSION,
            envd_access_token=sandbox.access_token,
        )

    def detail(self, sandbox: E2BSandbox) -> SandboxDetail:
        session = self.session(sandbox)
        spec = session.spec
        return SandboxDetail(
            **self.created(sandbox).model_dump(),
            started_at=sandbox.started_at,
            end_at=session.expires_at or sandbox.started_at,
            cpu_count=max(1, math.ceil(spec.cpus)),
            memory_mb=spec.memory_mb,
            disk_size_mb=spec.workspace_quota_mb,
            metadata=sandbox.metadata,
            allow_internet_access=sandbox.internet,
        )

    async def metrics(self, sandbox: E2BSandbox) -> list[SandboxMetric]:
        """One sample, now: E2B keeps a series; a session keeps no history, so CPU is the share
        used since the previous call (or since the start)."""
        spec = self.session(sandbox).spec
        usage = await self._runtime.files.usage(sandbox.session_id, USER_HOME)
        now = utcnow()
        cpu_sec = usage.cpu_sec
        last_cpu, last_at = sandbox.cpu_sample or (0.0, sandbox.started_at)
        sandbox.cpu_sample = (cpu_sec, now)
        cpus = max(1, math.ceil(spec.cpus))
        elapsed = max((now - last_at).total_seconds(), 1e-3)
        return [
            SandboxMetric(
                timestamp=now,
                timestamp_unix=int(now.timestamp()),
                cpu_count=cpus,
                cpu_used_pct=round(min(100.0, 100.0 * max(0.0, cpu_sec - last_cpu) / elapsed / cpus), 2),
                mem_used=usage.mem_bytes,
                mem_total=spec.memory_mb * 1024 * 1024,
                disk_used=usage.disk_used or 0,
                disk_total=usage.disk_total or 0,
            )
        ]

    async def _session_removed(self, session: Session) -> None:
        if not session.session_id.startswith(SESSION_PREFIX):
            return
        sandbox = self._by_id.pop(session.session_id[len(SESSION_PREFIX) :], None)
        if sandbox is not None:
            for watch in sandbox.watchers.values():
                watch.close()
            log.info("e2b: sandbox %s removed", sandbox.sandbox_id)
