"""E2B's control-plane payloads, as the SDK's generated client sends and parses them
(e2b 2.63.0 ``api/client/models``: ``new_sandbox_v2``, ``sandbox``, ``sandbox_detail``,
``listed_sandbox``, ``sandbox_metric``, ``error``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pydantic


class Payload(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class NewSandbox(Payload):
    """``POST /v2/sandboxes`` (and ``/sandboxes`` of SDKs up to 2.50, which add ``secure``)."""

    template_id: str = pydantic.Field(alias="templateID", min_length=1)
    timeout: int | None = pydantic.Field(default=None, ge=0)
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = pydantic.Field(default=None, alias="envVars")
    allow_internet_access: bool | None = None  # snake case on the wire, as the SDK sends it
    secure: bool | None = None
    auto_pause: bool | None = pydantic.Field(default=None, alias="autoPause")


class ConnectSandbox(Payload):
    timeout: int | None = pydantic.Field(default=None, ge=0)


class TimeoutRequest(Payload):
    timeout: int = pydantic.Field(ge=0)


class RefreshRequest(Payload):
    duration: int | None = pydantic.Field(default=None, ge=0)


class SandboxCreated(Payload):
    """``Sandbox``: the answer to create and connect."""

    template_id: str = pydantic.Field(serialization_alias="templateID")
    sandbox_id: str = pydantic.Field(serialization_alias="sandboxID")
    client_id: str = pydantic.Field(serialization_alias="clientID")
    envd_version: str = pydantic.Field(serialization_alias="envdVersion")
    envd_access_token: str | None = pydantic.Field(default=None, serialization_alias="envdAccessToken")


class SandboxDetail(SandboxCreated):
    """``SandboxDetail`` (get) and ``ListedSandbox`` (list): the same required fields."""

    started_at: dt.datetime = pydantic.Field(serialization_alias="startedAt")
    end_at: dt.datetime = pydantic.Field(serialization_alias="endAt")
    cpu_count: int = pydantic.Field(serialization_alias="cpuCount")
    memory_mb: int = pydantic.Field(serialization_alias="memoryMB")
    disk_size_mb: int = pydantic.Field(serialization_alias="diskSizeMB")
    state: Literal["running", "paused"] = "running"
    metadata: dict[str, str] = pydantic.Field(default_factory=dict)
    allow_internet_access: bool | None = pydantic.Field(default=None, serialization_alias="allowInternetAccess")


class SandboxMetric(Payload):
    timestamp: dt.datetime
    timestamp_unix: int = pydantic.Field(serialization_alias="timestampUnix")
    cpu_count: int = pydantic.Field(serialization_alias="cpuCount")
    cpu_used_pct: float = pydantic.Field(serialization_alias="cpuUsedPct")
    mem_used: int = pydantic.Field(serialization_alias="memUsed")
    mem_total: int = pydantic.Field(serialization_alias="memTotal")
    mem_cache: int = pydantic.Field(default=0, serialization_alias="memCache")
    disk_used: int = pydantic.Field(serialization_alias="diskUsed")
    disk_total: int = pydantic.Field(serialization_alias="diskTotal")


class ApiError(Payload):
    code: int
    message: str
