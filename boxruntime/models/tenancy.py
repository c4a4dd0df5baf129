"""LangBot 0.7's tenancy payloads (reference §B.2, §C.8, §D.12, §D.13), field for field.

Admission: a grant lets one workspace run a managed sandbox until it expires, a revocation is a
monotonic tombstone, and the policy (the ``box.admission`` config section) caps every grant.
Then what the host-control actions answer (grants, readiness, the shared-workspace probe), and
what a tenant sees of the runtime (its status with limits and capacity, its storage).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pydantic

from boxruntime.models import bounds
from boxruntime.models.base import Model, OmitNone, UnicodeFields
from boxruntime.models.box import RuntimeStatus


def _strict_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if not -bounds.MAX_COUNT <= value <= bounds.MAX_COUNT:
        raise ValueError(f"must be at most {bounds.MAX_COUNT} in size")
    return value


def _required_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return bounds.identifier(value, "id")


class SandboxAdmissionGrant(UnicodeFields):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    instance_uuid: str
    workspace_uuid: str
    execution_generation: int
    entitlement_revision: int
    expires_at: dt.datetime
    max_sessions: int
    max_managed_processes: int

    _ids = pydantic.field_validator("instance_uuid", "workspace_uuid")(classmethod(lambda cls, v: _required_id(v)))
    _ints = pydantic.field_validator(
        "execution_generation", "entitlement_revision", "max_sessions", "max_managed_processes", mode="before"
    )(classmethod(lambda cls, v: _strict_int(v)))

    @pydantic.field_validator("execution_generation", "entitlement_revision")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be greater than or equal to 1")
        return value

    @pydantic.field_validator("max_sessions", "max_managed_processes")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be greater than or equal to 0")
        return value

    @pydantic.field_validator("expires_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("expires_at must include a timezone")
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:  # year 9999 at a negative offset is year 10000 in UTC
            raise ValueError("expires_at is out of range") from None

    @property
    def workspace_key(self) -> tuple[str, str]:
        return self.instance_uuid, self.workspace_uuid

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at <= now


class SandboxAdmissionRevocation(UnicodeFields):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    instance_uuid: str
    workspace_uuid: str
    entitlement_revision: int

    _ids = pydantic.field_validator("instance_uuid", "workspace_uuid")(classmethod(lambda cls, v: _required_id(v)))

    @pydantic.field_validator("entitlement_revision", mode="before")
    @classmethod
    def _revision_is_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("entitlement_revision must be an integer")
        return _strict_int(value)

    @pydantic.field_validator("entitlement_revision")
    @classmethod
    def _revision(cls, value: int) -> int:
        if value < 1:
            raise ValueError("entitlement_revision must be greater than or equal to 1")
        return value

    @property
    def workspace_key(self) -> tuple[str, str]:
        return self.instance_uuid, self.workspace_uuid


class SandboxAdmissionPolicy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    required: bool = False
    logical_session_id: Literal["global"] = "global"
    required_backend: Literal["nsjail"] = "nsjail"
    max_sessions: int = 1
    max_managed_processes: int = 0
    max_grant_ttl_sec: int = 300
    max_timeout_sec: int = 120
    cpus: float = 1.0
    memory_mb: int = 512
    pids_limit: int = 128
    read_only_rootfs: bool = True
    workspace_quota_mb: int = 0
    readiness_cache_sec: int = 15

    _ints = pydantic.field_validator(
        "max_sessions",
        "max_managed_processes",
        "max_grant_ttl_sec",
        "max_timeout_sec",
        "memory_mb",
        "pids_limit",
        "workspace_quota_mb",
        "readiness_cache_sec",
        mode="before",
    )(classmethod(lambda cls, v: _strict_int(v)))

    @pydantic.field_validator("cpus", mode="before")
    @classmethod
    def _cpus_is_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("cpus must be a number")
        return value

    @pydantic.field_validator("max_sessions")
    @classmethod
    def _session_cap(cls, value: int) -> int:
        if not 0 <= value <= 1:
            raise ValueError("max_sessions must be between 0 and 1")
        return value

    @pydantic.field_validator("max_managed_processes")
    @classmethod
    def _process_cap(cls, value: int) -> int:
        if value != 0:
            raise ValueError("max_managed_processes must be 0")
        return value

    @pydantic.field_validator("max_grant_ttl_sec", "max_timeout_sec", "pids_limit")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @pydantic.field_validator("cpus")
    @classmethod
    def _cpus(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("cpus must be greater than 0")
        return value

    @pydantic.field_validator("memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value < 32:
            raise ValueError("memory_mb must be at least 32")
        return value

    @pydantic.field_validator("workspace_quota_mb", "readiness_cache_sec")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be greater than or equal to 0")
        return value


# ── what the host-control actions answer ─────────────────────────────────


class GrantInstalled(Model):
    """``box_upsert_sandbox_admission_grant``: the grant in force (a shorter duplicate of the
    current one leaves the current one)."""

    installed: bool = True
    workspace_uuid: str
    execution_generation: int
    entitlement_revision: int
    max_sessions: int
    max_managed_processes: int
    expires_at: str  # LangBot writes datetime.isoformat() ("+00:00", not pydantic's "Z")


class GrantRevoked(Model):
    """``box_revoke_sandbox_admission_grant``."""

    revoked: bool = True
    workspace_uuid: str
    entitlement_revision: int


class SharedWorkspaceProbe(Model):
    """``box_verify_shared_workspace``'s request. The name is checked by the action, which
    answers anything wrong with it as ``BoxReadinessError`` (never a validation error)."""

    marker_name: Any = ""


class ProbeDigest(Model):
    """``box_verify_shared_workspace``: what the runtime read of the probe file."""

    marker_name: str
    sha256: str
    size: int


class ReadinessReport(OmitNone):
    """LangBot 0.7's readiness object (``/readyz``; ``box_health`` under admission): standard
    mode, or every admission-mode check."""

    model_config = pydantic.ConfigDict(frozen=True)
    omit_when_none = ("unsafe_soft_storage_limits", "error")

    ready: bool
    mode: Literal["standard", "grant_enforced"]
    backend: dict[str, Any]
    checks: dict[str, bool]
    unsafe_soft_storage_limits: bool | None = None  # admission mode only
    error: str | None = None


class ManagedBackendInfo(Model):
    """``box_get_backend_info`` under admission: the backend, and readiness for ``available``."""

    name: str | None
    available: bool
    readiness: ReadinessReport


# ── what a tenant sees of the runtime ────────────────────────────────────


class StatusLimits(Model):
    max_sessions: int
    max_managed_processes: int
    max_completed_processes: int
    max_admission_records: int
    max_rpc_file_bytes: int


class StatusCapacity(Model):
    limit: int
    used: int
    remaining: int


class TenantRuntimeStatus(RuntimeStatus):
    """``box_status`` for a LangBot 0.7 request: counts of its placement's sessions, plus the
    runtime's limits and the workspace's capacity."""

    limits: StatusLimits
    capacity: StatusCapacity


class StorageDirectory(OmitNone):
    omit_when_none = ("parent_key",)

    key: str
    path: str
    kind: Literal["root", "detail"]
    exists: bool = False
    size_bytes: int = 0
    file_count: int = 0
    error_count: int = 0
    parent_key: str | None = None
    scope: Literal["runtime_host", "sandbox_sessions"]


class StorageAnalysis(Model):
    """``box_get_storage_analysis`` (reference §D.13)."""

    size_bytes: int
    directories: list[StorageDirectory]
    active_sessions: int
    managed_processes: int
