"""Admission ("grant-enforced") mode, LangBot 0.7's managed sandboxes (reference §D.12): the
``box.admission`` policy, the grants LangBot installs per workspace (expiry, revisions,
generations, revocation tombstones), and what a request may ask for under them.

Pure bookkeeping: no I/O, no sessions. The Tenancy acts on what these methods return (the
workspaces whose sessions must go).
"""

from __future__ import annotations

import datetime as dt
import heapq
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from boxruntime.config import Settings
from boxruntime.errors import BoxAdmissionError, BoxReadinessError
from boxruntime.models import DEFAULT_MOUNT_PATH, LANGBOT_DEFAULT_IMAGE, BoxSpec, HostMountMode, MountSpec, NetworkMode
from boxruntime.models.tenancy import (
    GrantInstalled,
    GrantRevoked,
    SandboxAdmissionGrant,
    SandboxAdmissionPolicy,
    SandboxAdmissionRevocation,
)
from boxruntime.payloads import dump
from boxruntime.tenancy.placement import Placement, Workspace
from boxruntime.tenancy.strict import StrictBoxSpec, StrictMountSpec, is_content_addressed

MAX_ADMITTED_READ_ONLY_MOUNTS = 256
WorkspaceKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Retirement:
    """Sessions a grant change ends: the workspace's, all of them or all but the canonical."""

    workspace: Workspace
    keep: str | None = None  # the physical id of the session that stays


def _is_under(path: str, root: str) -> bool:
    try:
        return os.path.commonpath((path, root)) == root
    except ValueError:
        return False


class Admission:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._seen_config: object = object()
        self._policy = SandboxAdmissionPolicy()
        self._config_error: str | None = None
        self._grants: dict[WorkspaceKey, SandboxAdmissionGrant] = {}
        self._expiry: list[tuple[float, WorkspaceKey, int, int]] = []
        self._revisions: dict[WorkspaceKey, int] = {}
        self._generations: dict[WorkspaceKey, int] = {}
        self._fingerprints: dict[WorkspaceKey, tuple[int, int]] = {}
        self._revoked: dict[WorkspaceKey, int] = {}

    # ── the policy ───────────────────────────────────────────────────────

    def refresh(self) -> None:
        """Read ``box.admission`` again if it changed. A malformed section turns enforcement
        on (fail closed); once on, enforcement cannot be turned off without a restart."""
        raw = self._settings.admission_config
        if raw is self._seen_config:
            return
        self._seen_config = raw
        was_required = self._policy.required
        if raw is None:
            policy, error = SandboxAdmissionPolicy(), None
        else:
            try:
                policy, error = SandboxAdmissionPolicy.model_validate(raw), None
            except (pydantic.ValidationError, TypeError, ValueError) as exc:
                policy, error = SandboxAdmissionPolicy(required=True), str(exc)
        if was_required and not policy.required:
            error = "Sandbox admission enforcement cannot be disabled without restarting the Box Runtime"
            policy = self._policy
        self._policy, self._config_error = policy, error

    @property
    def policy(self) -> SandboxAdmissionPolicy:
        self.refresh()
        return self._policy

    @property
    def config_error(self) -> str | None:
        self.refresh()
        return self._config_error

    @property
    def required(self) -> bool:
        return self.policy.required

    def _require_enabled(self) -> None:
        if not self.required:
            raise BoxAdmissionError("Sandbox admission enforcement is not enabled")
        if self.config_error:
            raise BoxReadinessError(f"Invalid sandbox admission configuration: {self.config_error}")

    # ── grants ───────────────────────────────────────────────────────────

    def grant_of(self, workspace: Workspace) -> SandboxAdmissionGrant | None:
        return self._grants.get((workspace.instance_uuid, workspace.workspace_uuid))

    def expire(self, now: dt.datetime) -> list[Retirement]:
        """Drop the grants that have expired; their workspaces' sessions must go."""
        ended: list[Retirement] = []
        while self._expiry and self._expiry[0][0] <= now.timestamp():
            expires_at, key, revision, generation = heapq.heappop(self._expiry)
            grant = self._grants.get(key)
            if grant is None or (grant.expires_at.timestamp(), grant.entitlement_revision) != (expires_at, revision):
                continue  # renewed or replaced: a newer heap entry owns it
            if grant.execution_generation != generation or not grant.expired(now):
                continue
            del self._grants[key]
            ended.append(Retirement(Workspace(*key)))
        return ended

    def require(self, placement: Placement, now: dt.datetime) -> SandboxAdmissionGrant:
        """The grant that admits ``placement`` now, or BoxAdmissionError saying why not."""
        self._require_enabled()
        grant = self.grant_of(placement.workspace)
        if grant is None:
            raise BoxAdmissionError("Sandbox admission grant is missing")
        if grant.expired(now):
            raise BoxAdmissionError("Sandbox admission grant has expired")
        if grant.execution_generation != placement.generation:
            raise BoxAdmissionError("Sandbox admission grant belongs to another execution generation")
        if grant.max_sessions <= 0:
            raise BoxAdmissionError("Sandbox admission grant does not permit sessions")
        if (
            grant.max_sessions > self.policy.max_sessions
            or grant.max_managed_processes > self.policy.max_managed_processes
        ):
            raise BoxAdmissionError("Sandbox admission grant exceeds the active runtime policy")
        return grant

    def _check_record_capacity(self, key: WorkspaceKey) -> None:
        if key not in self._revisions and len(self._revisions) >= self._settings.max_admission_records:
            raise BoxAdmissionError(
                "Sandbox admission record capacity reached; refusing an unbounded Workspace fence allocation"
            )

    def upsert(self, grant: SandboxAdmissionGrant, now: dt.datetime) -> tuple[GrantInstalled, Retirement]:
        self._require_enabled()
        policy = self.policy
        if grant.expired(now):
            raise BoxAdmissionError("Cannot install an expired sandbox admission grant")
        if grant.expires_at > now + dt.timedelta(seconds=policy.max_grant_ttl_sec):
            raise BoxAdmissionError("Sandbox admission grant lifetime exceeds the configured maximum")
        if grant.max_sessions > policy.max_sessions:
            raise BoxAdmissionError("Sandbox admission grant exceeds the session cap")
        if grant.max_managed_processes > policy.max_managed_processes:
            raise BoxAdmissionError("Sandbox admission grant exceeds the managed-process cap")
        key = grant.workspace_key
        self._check_record_capacity(key)
        if grant.entitlement_revision <= self._revoked.get(key, 0):
            raise BoxAdmissionError("Sandbox admission grant revision was revoked")
        highest = self._revisions.get(key, 0)
        if grant.entitlement_revision < highest:
            raise BoxAdmissionError("Sandbox admission grant revision is stale")
        if grant.execution_generation < self._generations.get(key, 0):
            raise BoxAdmissionError("Sandbox admission execution generation is stale")
        fingerprint = (grant.max_sessions, grant.max_managed_processes)
        previous = self._fingerprints.get(key)
        if grant.entitlement_revision == highest and previous is not None and previous != fingerprint:
            raise BoxAdmissionError("Sandbox admission limits changed without a new entitlement revision")
        workspace = Workspace(*key)
        current = self._grants.get(key)
        same = current is not None and (grant.entitlement_revision, grant.execution_generation) == (
            current.entitlement_revision,
            current.execution_generation,
        )
        installed = grant
        if same and current is not None and grant.expires_at < current.expires_at:
            # Two LangBot replicas renewing the same entitlement: the shorter duplicate is a no-op.
            installed, retirement = current, Retirement(workspace, keep=self.canonical_id(current))
        else:
            self._grants[key] = grant
            heapq.heappush(
                self._expiry,
                (grant.expires_at.timestamp(), key, grant.entitlement_revision, grant.execution_generation),
            )
            self._revisions[key] = grant.entitlement_revision
            self._generations[key] = grant.execution_generation
            self._fingerprints[key] = fingerprint
            if not same or grant.max_sessions == 0:
                retirement = Retirement(workspace)
            else:
                retirement = Retirement(workspace, keep=self.canonical_id(grant))
        result = GrantInstalled(
            workspace_uuid=installed.workspace_uuid,
            execution_generation=installed.execution_generation,
            entitlement_revision=installed.entitlement_revision,
            max_sessions=installed.max_sessions,
            max_managed_processes=installed.max_managed_processes,
            expires_at=installed.expires_at.isoformat(),
        )
        return result, retirement

    def revoke(self, revocation: SandboxAdmissionRevocation) -> tuple[GrantRevoked, Retirement]:
        self._require_enabled()
        key = revocation.workspace_key
        self._check_record_capacity(key)
        highest = self._revisions.get(key, 0)
        revoked = self._revoked.get(key, 0)
        if revocation.entitlement_revision < max(highest, revoked):
            raise BoxAdmissionError("Sandbox admission revocation is stale")
        self._grants.pop(key, None)
        self._revisions[key] = max(highest, revocation.entitlement_revision)
        self._revoked[key] = max(revoked, revocation.entitlement_revision)
        result = GrantRevoked(
            workspace_uuid=revocation.workspace_uuid, entitlement_revision=revocation.entitlement_revision
        )
        return result, Retirement(Workspace(*key))

    def canonical_id(self, grant: SandboxAdmissionGrant) -> str:
        placement = Placement(Workspace(*grant.workspace_key), grant.execution_generation)
        return placement.physical(self.policy.logical_session_id)

    # ── requests ─────────────────────────────────────────────────────────

    def logical_id(self, requested: Any) -> str:
        """Under admission every session action names the one runtime-owned session."""
        canonical = self.policy.logical_session_id
        if not isinstance(requested, str) or requested.strip() != canonical:
            raise BoxAdmissionError("Managed sandbox session_id is runtime-owned")
        return canonical

    def normalize_spec(self, data: dict[str, Any], workspace_dir: Path) -> dict[str, Any]:
        """A request's spec under the policy: refuse what it may not ask for, then force the
        runtime-owned fields (reference §D.12)."""
        spec = StrictBoxSpec.model_validate(data)
        policy = self.policy
        if spec.network != NetworkMode.OFF:
            raise BoxAdmissionError("Managed sandbox network access is disabled")
        if spec.mount_path != DEFAULT_MOUNT_PATH:
            raise BoxAdmissionError("Managed sandbox mount_path is runtime-owned")
        if spec.workdir != DEFAULT_MOUNT_PATH and not spec.workdir.startswith(f"{DEFAULT_MOUNT_PATH}/"):
            raise BoxAdmissionError("Managed sandbox workdir must stay under /workspace")
        if spec.host_path is not None and os.path.realpath(spec.host_path) != str(workspace_dir):
            raise BoxAdmissionError("Managed sandbox host_path is runtime-owned")
        mounts = self._admitted_mounts(spec.extra_mounts)
        normalized = BoxSpec(
            **{
                **spec.model_dump(exclude={"extra_mounts"}),
                "session_id": policy.logical_session_id,
                "network": NetworkMode.OFF,
                "image": LANGBOT_DEFAULT_IMAGE,
                "host_path": str(workspace_dir),
                "host_path_mode": HostMountMode.READ_WRITE,
                "mount_path": DEFAULT_MOUNT_PATH,
                "persistent": True,
                "timeout_sec": min(spec.timeout_sec, policy.max_timeout_sec),
                "cpus": policy.cpus,
                "memory_mb": policy.memory_mb,
                "pids_limit": policy.pids_limit,
                "read_only_rootfs": policy.read_only_rootfs,
                "workspace_quota_mb": policy.workspace_quota_mb,
            },
            extra_mounts=[MountSpec(host_path=m.host_path, mount_path=m.mount_path, mode=m.mode) for m in mounts],
        )
        return dump(normalized)

    def _admitted_mounts(self, mounts: list[StrictMountSpec]) -> list[StrictMountSpec]:
        if len(mounts) > MAX_ADMITTED_READ_ONLY_MOUNTS:
            raise BoxAdmissionError(f"Managed sandbox accepts at most {MAX_ADMITTED_READ_ONLY_MOUNTS} read-only mounts")
        roots = [os.path.realpath(root) for root in self._settings.allowed_mount_roots]
        if mounts and not roots:
            raise BoxAdmissionError("Managed sandbox read-only mounts require allowed_mount_roots")
        admitted: list[StrictMountSpec] = []
        targets: set[str] = set()
        for mount in mounts:
            if mount.mode != HostMountMode.READ_ONLY:
                raise BoxAdmissionError("Managed sandbox additional mounts must be read-only")
            source = os.path.realpath(mount.host_path)
            if not os.path.isdir(source):
                raise BoxAdmissionError("Managed sandbox read-only mount source is unavailable")
            if not any(_is_under(source, root) for root in roots):
                raise BoxAdmissionError("Managed sandbox read-only mount source is outside allowed_mount_roots")
            if mount.manifest_path is not None:
                if mount.content_digest is None:
                    raise BoxAdmissionError("Managed sandbox mount manifests require content_digest")
                manifest = os.path.realpath(mount.manifest_path)
                if not os.path.isfile(manifest):
                    raise BoxAdmissionError("Managed sandbox read-only mount manifest is unavailable")
                if not any(_is_under(manifest, root) for root in roots):
                    raise BoxAdmissionError("Managed sandbox read-only mount manifest is outside allowed_mount_roots")
            if not is_content_addressed(mount) and not mount.mount_path.startswith(f"{DEFAULT_MOUNT_PATH}/"):
                raise BoxAdmissionError("Managed sandbox additional mount targets must stay under /workspace")
            if mount.mount_path in targets:
                raise BoxAdmissionError("Managed sandbox additional mount targets must be unique")
            targets.add(mount.mount_path)
            admitted.append(mount.model_copy(update={"host_path": source}))
        return admitted
