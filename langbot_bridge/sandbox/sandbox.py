"""``Sandbox``: one Box session as an object, with ``commands``, ``files``, ``processes`` and
``mcp``; the layers underneath (``Connector``, ``BoxService``, ``BoxClient``) stay available.

Which daemon: ``endpoint`` (else ``$BOXRUNTIME_ENDPOINT``) with ``token`` (else
``$BOXRUNTIME_TOKEN``); with neither, a local daemon is spawned for this sandbox and ends with
it. Many sandboxes can share one link: pass ``connector=`` (a ``Connector`` you entered).

Life: ``async with Sandbox(...) as sbx`` or ``sbx = await Sandbox.create(...)`` (then
``await sbx.kill()`` or ``await sbx.close()``); ``await Sandbox.connect(id)`` finds one that
exists. Leaving ``async with`` removes a sandbox this object created, unless it is
``persistent`` or ``kill_on_exit=False``; a reconnected one is left running. An idle sandbox
that is not persistent is removed by the daemon after its TTL (5 minutes by default).
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from boxruntime.models import (
    DEFAULT_MOUNT_PATH,
    SESSION_IDENTITY_FIELDS,
    HostMountMode,
    MountSpec,
    NetworkMode,
    SessionDetails,
    SessionInfo,
)
from langbot_bridge.connector import Connector
from langbot_bridge.links import RemoteTarget, SpawnTarget, Target
from langbot_bridge.profiles import MountPolicy
from langbot_bridge.sandbox.commands import Commands
from langbot_bridge.sandbox.files import Files
from langbot_bridge.sandbox.host import Host
from langbot_bridge.sandbox.mcp import McpServers
from langbot_bridge.sandbox.processes import Processes
from langbot_bridge.service import BoxService

if TYPE_CHECKING:
    from langbot_bridge.audit import AuditLog

ENDPOINT_ENV = "BOXRUNTIME_ENDPOINT"
TOKEN_ENV = "BOXRUNTIME_TOKEN"
ID_PREFIX = "sdk-"


def runtime_target(endpoint: str | None = None, token: str | None = None, *, daemon_args: Sequence[str] = ()) -> Target:
    """The daemon to use: ``endpoint`` or ``$BOXRUNTIME_ENDPOINT`` (with ``token`` or
    ``$BOXRUNTIME_TOKEN``), else a local one spawned with ``boxruntime serve --stdio <daemon_args>``."""
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if endpoint is not None:
        if daemon_args:
            raise BoxValidationError(f"daemon_args configure a spawned daemon, but the sandbox uses {endpoint}")
        return RemoteTarget(endpoint, token or os.environ.get(TOKEN_ENV))
    env = {k: v for k, v in os.environ.items() if k != ENDPOINT_ENV}
    args = tuple(daemon_args)
    if "--log-level" not in args:
        # Its start and stop are not the script's business, and a failed call raises there.
        args += ("--log-level", "error")
    return SpawnTarget(args=args, env=env)


def _mount_specs(mounts: Mapping[str | Path, str] | Sequence[MountSpec] | None) -> list[MountSpec]:
    """``{host_dir: sandbox_dir}`` (read-only) or MountSpec objects."""
    if mounts is None:
        return []
    if isinstance(mounts, Mapping):
        return [
            MountSpec(host_path=os.path.abspath(host), mount_path=inside, mode=HostMountMode.READ_ONLY)
            for host, inside in mounts.items()
        ]
    return list(mounts)


class Sandbox:
    """A sandbox: ``commands``, ``files``, ``processes`` and ``mcp`` in one Box session."""

    def __init__(
        self,
        sandbox_id: str | None = None,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        connector: Connector | None = None,
        daemon_args: Sequence[str] = (),
        profile: str = "default",
        profile_dirs: Sequence[Path] = (),
        image: str | None = None,
        network: bool | str | None = None,
        persistent: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        mounts: Mapping[str | Path, str] | Sequence[MountSpec] | None = None,
        spec: Mapping[str, Any] | None = None,
        kill_on_exit: bool | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        """Describe a sandbox; nothing happens until ``async with`` (or use ``create``/``connect``).

        ``sandbox_id`` names the session (default: a new ``sdk-…`` id). ``image``, ``network``
        (``True``/``"on"``), ``persistent`` (never removed for being idle), ``mounts``
        (``{host_dir: sandbox_dir}``, read-only; the daemon must allow the host dir:
        ``--allow-mount-root``) and ``spec`` (other ``BoxSpec`` fields: ``cpus``, ``memory_mb`` …)
        shape the session; ``env``, ``cwd`` and ``timeout`` are defaults for its commands.
        """
        self.sandbox_id = sandbox_id or f"{ID_PREFIX}{secrets.token_hex(6)}"
        extra_mounts = _mount_specs(mounts)
        own = None if connector is not None else Connector(runtime_target(endpoint, token, daemon_args=daemon_args))
        self.connector = connector or own
        assert self.connector is not None
        self.service = BoxService(
            self.connector,
            profile=profile,
            profile_dirs=profile_dirs,
            allowed_mount_roots=[m.host_path for m in extra_mounts],  # the caller asked for exactly these
            audit=audit,
        )
        self._request: dict[str, Any] = dict(spec or {})
        if image is not None:
            self._request["image"] = image
        if network is not None:
            on = network is True or (isinstance(network, str) and network.lower() == "on")
            self._request["network"] = NetworkMode.ON if on else NetworkMode.OFF
        if persistent:
            self._request["persistent"] = True
        if extra_mounts:
            self._request["extra_mounts"] = [m.model_dump(mode="json") for m in extra_mounts]
        self.service.build_spec(self.sandbox_id, self._request)  # a bad option fails here, not later
        self._env = dict(env or {})
        self._cwd = cwd
        self._timeout = timeout
        self._kill_on_exit = kill_on_exit
        self._created = False
        self.host = Host((lambda: own) if own is not None else None)
        self._opened = False
        self._closed = False
        self.info: SessionInfo | None = None  # as the daemon last described it
        self.commands = Commands(self)
        self.files = Files(self)
        self.processes = Processes(self)
        self.mcp = McpServers(self)

    # ── lifecycle ───────────────────────────────────────────────────────

    @classmethod
    async def create(cls, sandbox_id: str | None = None, **options: Any) -> Sandbox:
        """A started sandbox (its session created now); ``kill()`` or ``close()`` it when done."""
        sandbox = cls(sandbox_id, **options)
        await sandbox._open(create=True)
        return sandbox

    @classmethod
    async def connect(cls, sandbox_id: str, **options: Any) -> Sandbox:
        """The existing sandbox ``sandbox_id`` (BoxSessionNotFoundError if there is none), with
        its image, network, mounts and limits as they are; leaving it does not remove it."""
        options.setdefault("kill_on_exit", False)
        sandbox = cls(sandbox_id, **options)
        await sandbox._open(create=False)
        return sandbox

    async def __aenter__(self) -> Sandbox:
        if not self._opened:
            await self._open(create=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        kill = self._kill_on_exit
        if kill is None:
            kill = self._created and not self._request.get("persistent", False)
        if kill:
            await self.kill()
        else:
            await self.close()

    async def _open(self, *, create: bool) -> None:
        if self._opened:
            raise RuntimeError("this Sandbox is already open")
        self._opened = True
        await self.host.open()
        try:
            self.service.require()
            if create:
                self.info = await self.service.ensure_session(self.sandbox_id, self._request)
                self._created = True
            else:
                self._adopt(await self.service.client.get_session(self.sandbox_id))
        except BaseException:
            await self.close()
            raise

    def _adopt(self, details: SessionDetails) -> None:
        """Requests must match the session's identity: take it from the session itself."""
        self.info = details
        for name in SESSION_IDENTITY_FIELDS:
            value = getattr(details, name)
            self._request[name] = value.value if hasattr(value, "value") else value
        mounts = details.extra_mounts
        if mounts:
            self._request["extra_mounts"] = [m.model_dump(mode="json") for m in mounts]
        roots = [*self.service.mounts.roots, *(m.host_path for m in mounts)]
        if details.host_path is not None:
            roots.append(details.host_path)
        self.service.mounts = MountPolicy(roots)

    async def kill(self) -> None:
        """Remove the sandbox and its files, then close this object."""
        try:
            if self._opened and not self._closed:
                await self.mcp.close()
                with contextlib.suppress(BoxSessionNotFoundError):  # gone already: what kill wants
                    await self.service.delete_session(self.sandbox_id)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close this object (its background commands, MCP connections and own connection);
        the sandbox itself stays as it is."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._opened:
                await self.mcp.close()
        finally:
            await self.host.close()

    # ── state ───────────────────────────────────────────────────────────

    async def get_info(self) -> SessionDetails:
        """The session as the daemon sees it now (with its managed processes)."""
        details = await self.service.client.get_session(self.sandbox_id)
        self.info = details
        return details

    async def is_running(self) -> bool:
        """Whether the session still exists on the daemon."""
        try:
            await self.get_info()
        except BoxSessionNotFoundError:
            return False
        return True

    @property
    def request(self) -> dict[str, Any]:
        """The spec fields every call sends (what the session was created with)."""
        return dict(self._request)

    def command_request(
        self, *, timeout: float | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> dict[str, Any]:
        """The spec fields of one command: the session's, its environment, directory and time
        limit. A limit above the profile's is refused (BoxValidationError), not cut down."""
        request = dict(self._request)
        merged = {**self._env, **(env or {})}
        if merged:
            request["env"] = merged
        workdir = cwd or self._cwd
        if workdir:
            base = str(self._request.get("mount_path") or DEFAULT_MOUNT_PATH)
            request["workdir"] = posixpath.normpath(posixpath.join(base, workdir))
        limit = timeout if timeout is not None else self._timeout
        if limit is not None:
            seconds = max(1, math.ceil(limit))
            allowed = self.service.profile.max_timeout_sec
            if seconds > allowed:
                raise BoxValidationError(
                    f"timeout {limit:g} s is above the {self.service.profile.name} profile's limit of {allowed} s: "
                    "ask for less, or use a profile that allows more (profile=..., profile_dirs=...)"
                )
            request["timeout_sec"] = seconds
        return request

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r})"
