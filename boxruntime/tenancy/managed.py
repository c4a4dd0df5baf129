"""Managed sandboxes: admission mode at work (reference §D.12). The grant actions, the admission
check every sandbox action of a 0.7 client passes first, the canonical tenant workspace (with a
hard quota), ``box_verify_shared_workspace`` (§D.13), and the expiry of grants.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from boxruntime.backends.common import workspace as workspaces
from boxruntime.errors import BoxAdmissionError, BoxPermissionError, BoxReadinessError
from boxruntime.models import (
    Empty,
    GrantInstalled,
    GrantRevoked,
    ManagedBackendInfo,
    ProbeDigest,
    ReadinessReport,
    SandboxAdmissionGrant,
    SandboxAdmissionRevocation,
    SharedWorkspaceProbe,
)
from boxruntime.models import actions as a
from boxruntime.models.action_kinds import Kind
from boxruntime.protocol import Payload
from boxruntime.runtime.core import BoxRuntime
from boxruntime.tenancy.admission import Admission, Retirement
from boxruntime.tenancy.fence import GenerationFence
from boxruntime.tenancy.placement import Placement, Workspace
from boxruntime.tenancy.readiness import Readiness, managed_workspace_root
from boxruntime.tenancy.trust import TrustedInstance

log = logging.getLogger(__name__)

EXPIRY_SWEEP_SEC = 5.0
PROBE_NAME = re.compile(r"\.langbot-box-volume-probe-[a-f0-9]{32}")
PROBE_MAX_BYTES = 1024
# Sandbox actions (LangBot's "S" actions, and ours that reach a sandbox): under admission they
# need a valid grant and a ready runtime, and name the one runtime-owned session.
SANDBOX_ACTIONS = a.names(Kind.SANDBOX)
# The sandbox actions whose request is a BoxSpec (admission normalises it; strict mode checks it).
SPEC_ACTIONS = frozenset(action.name for action in (a.EXEC, a.EXEC_STREAM, a.CREATE_SESSION))
# What box_exec_interactive adds to a BoxSpec (boxruntime.models.interactive).
INTERACTIVE_FIELDS = ("stdin", "tty", "no_timeout")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ManagedSandboxes:
    def __init__(
        self,
        runtime: BoxRuntime,
        trust: TrustedInstance,
        fence: GenerationFence,
        retire: Callable[[Retirement], Awaitable[None]],
    ) -> None:
        self._runtime = runtime
        self._trust = trust
        self._fence = fence
        self._retire = retire
        self.admission = Admission(runtime.settings)
        self.readiness = Readiness(runtime, self.admission)
        self._quota_mounts: set[Path] = set()  # tenant workspaces this daemon mounted an image on

    @property
    def required(self) -> bool:
        return self.admission.required

    # ── what a sandbox action of a 0.7 client passes first ───────────────

    async def admit(self, placement: Placement) -> SandboxAdmissionGrant:
        readiness = await self.readiness.get()
        if not readiness.ready:
            failed = [name for name, ok in readiness.checks.items() if not ok]
            raise BoxReadinessError(
                f"Managed sandbox isolation is not ready (failed checks: {', '.join(failed) or 'unknown'})"
            )
        await self.expire()
        return self.admission.require(placement, _now())

    def admitted_request(
        self, action: str, data: Payload, placement: Placement, grant: SandboxAdmissionGrant
    ) -> Payload:
        """The request as admission mode runs it: a spec normalised onto the canonical session
        and workspace, or the one session id checked."""
        if action in SPEC_ACTIONS:
            return self.admission.normalize_spec(data, self.workspace_dir(placement))
        if action == a.EXEC_INTERACTIVE.name:
            return self._interactive(data, placement)
        if action == a.GET_SESSIONS.name:
            return data
        self.admission.logical_id(data.get("session_id"))
        if action == a.START_PROCESS.name and grant.max_managed_processes <= 0:
            raise BoxAdmissionError("Sandbox admission grant does not permit managed processes")
        return data

    def _interactive(self, data: Payload, placement: Placement) -> Payload:
        """An interactive exec's spec normalised as box_exec's is; how it is attached kept, but
        never without the policy's timeout."""
        attach = {key: data[key] for key in INTERACTIVE_FIELDS if key in data}
        if attach.get("no_timeout"):
            raise BoxAdmissionError("Managed sandbox commands keep the policy's timeout")
        spec = {key: value for key, value in data.items() if key not in INTERACTIVE_FIELDS}
        return {**self.admission.normalize_spec(spec, self.workspace_dir(placement)), **attach}

    async def admit_relay(self, placement: Placement) -> None:
        grant = await self.admit(placement)
        if grant.max_managed_processes <= 0:
            raise BoxAdmissionError("Sandbox admission grant does not permit managed process relay")

    def workspace_dir(self, placement: Placement) -> Path:
        """``<default_workspace>/tenants/<ns>``, made on first use; with a policy quota, a
        loop-mounted ext4 image of that size is mounted there (a hard quota LangBot's host can
        write into too)."""
        try:
            root = managed_workspace_root(self._runtime)
        except ValueError as exc:
            raise BoxReadinessError(str(exc)) from None
        tenants = root / "tenants"
        tenants.mkdir(exist_ok=True)
        directory = tenants / placement.workspace.namespace
        if Path(os.path.realpath(directory)).parent != Path(os.path.realpath(tenants)):
            raise BoxAdmissionError("Managed sandbox Workspace path escapes its tenant directory")
        directory.mkdir(exist_ok=True)
        quota = self.admission.policy.workspace_quota_mb
        if quota > 0 and workspaces.loop_quota_supported():
            settings = self._runtime.settings
            image = settings.data_dir / "tenant-quotas" / f"{placement.workspace.namespace}.ext4"
            workspaces.mount_quota_image(image, directory, quota, settings.sandbox_uid, settings.sandbox_gid)
            self._quota_mounts.add(directory)
        return Path(os.path.realpath(directory))

    def close(self) -> None:
        """Unmount the tenant workspaces' quota images (their files stay in the images, which
        the next daemon mounts again on first use); after every sandbox was removed."""
        for directory in sorted(self._quota_mounts):
            try:
                workspaces.unmount(directory)
            except Exception:
                log.exception("could not unmount the quota image of %s", directory)
        self._quota_mounts.clear()

    # ── grant actions (host control) ──────────────────────────────────────

    def _trusted(self, instance: str, what: str) -> None:
        if self._trust.value is None or not self._trust.admit(instance, pin=False):
            raise BoxPermissionError(f"Sandbox admission {what} does not match the trusted instance")

    async def upsert_grant(self, grant: SandboxAdmissionGrant) -> GrantInstalled:
        self._trusted(grant.instance_uuid, "grant")
        result, retirement = self.admission.upsert(grant, _now())
        await self._retire(retirement)
        placement = Placement(Workspace(grant.instance_uuid, grant.workspace_uuid), grant.execution_generation)
        if self._fence.observe(placement):
            await self._retire(Retirement(placement.workspace, keep=None))
        return result

    async def revoke_grant(self, revocation: SandboxAdmissionRevocation) -> GrantRevoked:
        self._trusted(revocation.instance_uuid, "revocation")
        result, retirement = self.admission.revoke(revocation)
        await self._retire(retirement)
        return result

    async def expire(self) -> None:
        for retirement in self.admission.expire(_now()):
            log.info("admission grant of %s expired", retirement.workspace.namespace)
            await self._retire(retirement)

    async def run_expiry(self) -> None:
        """Drop expired grants and their sessions even when no request comes; until cancelled."""
        while True:
            await anyio.sleep(EXPIRY_SWEEP_SEC)
            if self.admission.required:
                await self.expire()

    # ── health (host control) ─────────────────────────────────────────────

    async def health(self, _: Empty) -> ReadinessReport:
        """``box_health`` under admission: the readiness object, once ready."""
        readiness = await self.readiness.get()
        if not readiness.ready:
            raise BoxReadinessError("managed sandbox isolation is not ready")
        return readiness

    async def backend_info(self, _: Empty) -> ManagedBackendInfo:
        """``box_get_backend_info`` under admission: available means ready."""
        readiness = await self.readiness.get()
        return ManagedBackendInfo(name=readiness.backend["name"], available=readiness.ready, readiness=readiness)

    async def verify_shared_workspace(self, probe: SharedWorkspaceProbe) -> ProbeDigest:
        try:
            return await anyio.to_thread.run_sync(self._digest_probe, probe.marker_name)
        except BoxReadinessError:
            raise
        except Exception as exc:
            raise BoxReadinessError(str(exc)) from None

    def _digest_probe(self, marker_name: Any) -> ProbeDigest:
        """The sha256 of a probe file LangBot wrote into the default workspace, read without
        following a symbolic link anywhere (reference §B.2)."""
        if not isinstance(marker_name, str) or not PROBE_NAME.fullmatch(marker_name):
            raise BoxReadinessError("Box shared Workspace probe name is invalid")
        try:
            root = managed_workspace_root(self._runtime)
        except ValueError as exc:
            raise BoxReadinessError(str(exc)) from None
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            try:
                fd = os.open(marker_name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=root_fd)
            except OSError:
                raise BoxReadinessError("Box Runtime cannot read the Core shared Workspace probe") from None
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BoxReadinessError("Box shared Workspace probe is not a regular file")
                if not 1 <= st.st_size <= PROBE_MAX_BYTES:
                    raise BoxReadinessError("Box shared Workspace probe has an invalid size")
                content = handle.read(PROBE_MAX_BYTES + 1)
        finally:
            os.close(root_fd)
        if not 1 <= len(content) <= PROBE_MAX_BYTES:
            raise BoxReadinessError("Box shared Workspace probe has an invalid size")
        return ProbeDigest(marker_name=marker_name, sha256=hashlib.sha256(content).hexdigest(), size=len(content))
