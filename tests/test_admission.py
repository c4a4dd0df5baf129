"""Admission mode's bookkeeping (reference §C.8, §D.12): the policy, grants and what they admit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pydantic
import pytest

from boxruntime.config import Settings
from boxruntime.errors import BoxAdmissionError, BoxReadinessError
from boxruntime.models.tenancy import SandboxAdmissionGrant, SandboxAdmissionRevocation
from boxruntime.tenancy.admission import Admission, Retirement
from boxruntime.tenancy.placement import Placement, Workspace

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
WS = Workspace("inst-1", "ws-a")


def grant(**changes: Any) -> SandboxAdmissionGrant:
    fields: dict[str, Any] = {
        "instance_uuid": "inst-1",
        "workspace_uuid": "ws-a",
        "execution_generation": 1,
        "entitlement_revision": 1,
        "expires_at": NOW + dt.timedelta(seconds=120),
        "max_sessions": 1,
        "max_managed_processes": 0,
    }
    return SandboxAdmissionGrant(**{**fields, **changes})


def admission(tmp_path: Path, policy: Any = None, **settings: Any) -> Admission:
    config = {"required": True} if policy is None else policy
    return Admission(Settings(data_dir=tmp_path, admission_config=config, **settings))


def test_without_a_section_admission_is_off_and_refuses_grants(tmp_path: Path) -> None:
    off = Admission(Settings(data_dir=tmp_path))
    assert not off.required
    with pytest.raises(BoxAdmissionError, match="not enabled"):
        off.upsert(grant(), NOW)


@pytest.mark.parametrize("policy", [{"required": False, "max_managed_processes": 1}, "yes", {"bogus": 1}])
def test_a_malformed_policy_fails_closed(tmp_path: Path, policy: Any) -> None:
    adm = admission(tmp_path, policy)
    assert adm.required and adm.config_error
    with pytest.raises(BoxReadinessError, match="Invalid sandbox admission configuration"):
        adm.upsert(grant(), NOW)


def test_enforcement_cannot_be_turned_off_without_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admission_config={"required": True})
    adm = Admission(settings)
    assert adm.required
    settings.admission_config = {"required": False}
    assert adm.required and "cannot be disabled" in (adm.config_error or "")


def test_a_grant_admits_its_generation_until_it_expires(tmp_path: Path) -> None:
    adm = admission(tmp_path)
    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        adm.require(Placement(WS, 1), NOW)
    result, retirement = adm.upsert(grant(), NOW)
    assert result.model_dump(mode="json") == {
        "installed": True,
        "workspace_uuid": "ws-a",
        "execution_generation": 1,
        "entitlement_revision": 1,
        "max_sessions": 1,
        "max_managed_processes": 0,
        "expires_at": "2026-12-06T12:02:00+00:00",
    }
    assert retirement == Retirement(WS)  # a new grant ends whatever the workspace ran before
    assert adm.require(Placement(WS, 1), NOW).entitlement_revision == 1
    with pytest.raises(BoxAdmissionError, match="another execution generation"):
        adm.require(Placement(WS, 2), NOW)
    later = NOW + dt.timedelta(seconds=121)
    assert adm.expire(later) == [Retirement(WS)]
    with pytest.raises(BoxAdmissionError, match="grant is missing"):
        adm.require(Placement(WS, 1), later)


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"expires_at": NOW - dt.timedelta(seconds=1)}, "expired"),
        ({"expires_at": NOW + dt.timedelta(seconds=301)}, "lifetime exceeds"),
        ({"max_sessions": 2}, "session cap"),
        ({"max_managed_processes": 1}, "managed-process cap"),
    ],
)
def test_grants_beyond_the_policy_are_refused(tmp_path: Path, changes: dict[str, Any], text: str) -> None:
    with pytest.raises(BoxAdmissionError, match=text):
        admission(tmp_path).upsert(grant(**changes), NOW)


def test_revisions_generations_and_tombstones_only_move_forward(tmp_path: Path) -> None:
    adm = admission(tmp_path)
    adm.upsert(grant(entitlement_revision=2, execution_generation=3), NOW)
    with pytest.raises(BoxAdmissionError, match="revision is stale"):
        adm.upsert(grant(entitlement_revision=1, execution_generation=3), NOW)
    with pytest.raises(BoxAdmissionError, match="generation is stale"):
        adm.upsert(grant(entitlement_revision=2, execution_generation=2), NOW)
    with pytest.raises(BoxAdmissionError, match="limits changed without a new entitlement revision"):
        adm.upsert(grant(entitlement_revision=2, execution_generation=3, max_sessions=0), NOW)
    # The same entitlement renewed by a replica with a shorter lifetime: idempotent, keeps the longer.
    shorter = grant(entitlement_revision=2, execution_generation=3, expires_at=NOW + dt.timedelta(seconds=60))
    result, retirement = adm.upsert(shorter, NOW)
    assert result.model_dump(mode="json")["expires_at"] == "2026-12-06T12:02:00+00:00"
    assert retirement.keep == Placement(WS, 3).physical("global")
    revoked, ended = adm.revoke(
        SandboxAdmissionRevocation(instance_uuid="inst-1", workspace_uuid="ws-a", entitlement_revision=2)
    )
    assert revoked.model_dump(mode="json") == {"revoked": True, "workspace_uuid": "ws-a", "entitlement_revision": 2}
    assert ended == Retirement(WS)
    with pytest.raises(BoxAdmissionError, match="revision was revoked"):
        adm.upsert(grant(entitlement_revision=2, execution_generation=3), NOW)
    with pytest.raises(BoxAdmissionError, match="revocation is stale"):
        adm.revoke(SandboxAdmissionRevocation(instance_uuid="inst-1", workspace_uuid="ws-a", entitlement_revision=1))
    assert adm.upsert(grant(entitlement_revision=3, execution_generation=3), NOW)[0].installed


def test_admission_records_are_bounded(tmp_path: Path) -> None:
    adm = admission(tmp_path, max_admission_records=1)
    adm.upsert(grant(), NOW)
    with pytest.raises(BoxAdmissionError, match="record capacity"):
        adm.upsert(grant(workspace_uuid="ws-b"), NOW)


def test_grant_models_are_strict() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be an integer"):
        grant(max_sessions=True)
    with pytest.raises(pydantic.ValidationError, match="timezone"):
        grant(expires_at=dt.datetime(2026, 12, 6, 12, 0))
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        SandboxAdmissionGrant.model_validate({**grant().model_dump(), "plan": "pro"})


def test_specs_are_normalised_onto_the_canonical_session_and_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "tenants" / WS.namespace
    workspace.mkdir(parents=True)
    adm = admission(tmp_path, {"required": True, "max_timeout_sec": 60, "memory_mb": 256, "workspace_quota_mb": 32})
    spec = adm.normalize_spec({"session_id": "anything", "cmd": "ls", "timeout_sec": 600, "cpus": 4}, workspace)
    assert spec["session_id"] == "global" and spec["host_path"] == str(workspace)
    assert (spec["timeout_sec"], spec["memory_mb"], spec["cpus"], spec["workspace_quota_mb"]) == (60, 256, 1.0, 32)
    assert spec["persistent"] is True and spec["network"] == "off"
    for bad, text in [
        ({"network": "on"}, "network access is disabled"),
        ({"mount_path": "/data"}, "mount_path is runtime-owned"),
        ({"workdir": "/tmp"}, "workdir must stay under /workspace"),
        ({"host_path": "/etc"}, "host_path is runtime-owned"),
        ({"extra_mounts": [{"host_path": str(tmp_path), "mount_path": "/workspace/x", "mode": "rw"}]}, "read-only"),
    ]:
        with pytest.raises(BoxAdmissionError, match=text):
            adm.normalize_spec({"session_id": "global", "cmd": "ls", **bad}, workspace)
    assert adm.logical_id("global") == "global"
    with pytest.raises(BoxAdmissionError, match="runtime-owned"):
        adm.logical_id("mine")
