"""The contract: payload models shared by the daemon and the bridge.

Field names, defaults and validation follow LangBot 0.5.0a2 (reference §C) so LangBot's client
and ours read the same JSON. Where we add fields, they are extra keys on responses, which
LangBot's pydantic models ignore; we never change the meaning of an existing field.
"""

from __future__ import annotations

import datetime as dt
import enum
import ntpath
import posixpath
from typing import Any, Literal

import pydantic

from boxruntime.models import bounds
from boxruntime.models.base import Model, OmitNone, Request

DEFAULT_IMAGE = "boxruntime/sandbox:latest"
# What LangBot's client sends when its user did not choose an image. It lives on a registry
# we may not reach, so the daemon maps it to its own default image when it is not present.
LANGBOT_DEFAULT_IMAGE = "rockchin/langbot-sandbox:latest"
DEFAULT_MOUNT_PATH = "/workspace"
OUTPUT_CAP_BYTES = 1024 * 1024


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NetworkMode(str, enum.Enum):
    OFF = "off"
    ON = "on"


class HostMountMode(str, enum.Enum):
    NONE = "none"
    READ_ONLY = "ro"
    READ_WRITE = "rw"


class ExecStatus(str, enum.Enum):
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"


class EndReason(str, enum.Enum):
    """Why a command ended; LangBot only knows completed/timed_out, this says more."""

    EXIT = "exit"
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    OOM = "oom"
    CANCELLED = "cancelled"


class ManagedProcessStatus(str, enum.Enum):
    RUNNING = "running"
    EXITED = "exited"


class SessionStatus(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    CLOSING = "closing"


def _is_absolute_host_path(value: str) -> bool:
    return posixpath.isabs(value) or ntpath.isabs(value)


def _stripped_absolute_sandbox_path(value: str, field: str) -> str:
    value = value.strip()
    if not value.startswith("/"):
        raise ValueError(f"{field} must be an absolute path inside the sandbox")
    return bounds.path_text(value, field)


def _absolute_host_path(value: str, field: str) -> str:
    value = value.strip()
    if not _is_absolute_host_path(value):
        raise ValueError(f"{field} must be an absolute host path")
    return bounds.path_text(value, field)


def non_blank(value: str, field: str) -> str:
    """``value`` stripped; ValueError naming ``field`` when nothing is left."""
    value = value.strip()
    if not value:
        raise ValueError(f"{field} must not be empty")
    return value


def session_id(value: str) -> str:
    """A session id: stripped, not empty, bounded (``bounds.identifier``)."""
    return bounds.identifier(non_blank(value, "session_id"), "session_id")


MAX_MOUNTS = 64  # extra mounts of one sandbox
MAX_PROCESS_ID_CHARS = 128


def _string_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return value


class MountSpec(Request):
    """One additional bind mount (LangBot's BoxMountSpec)."""

    model_config = pydantic.ConfigDict(extra="ignore")

    host_path: str
    mount_path: str
    mode: HostMountMode = HostMountMode.READ_WRITE

    @pydantic.field_validator("host_path")
    @classmethod
    def _host_path(cls, value: str) -> str:
        return _absolute_host_path(value, "host_path")

    @pydantic.field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        value = _stripped_absolute_sandbox_path(value, "mount_path")
        if posixpath.normpath(value) != value:
            raise ValueError("mount_path must be a normalised path (no '..', '.', '//')")
        return value


class BoxSpec(Request):
    """A request for a sandbox (and, for exec, a command in it). LangBot's BoxSpec.

    Unknown keys are ignored, as LangBot 0.5 does, so newer clients can talk to us. Beyond
    LangBot's rules every field is bounded (``bounds``): sizes, a timeout of at most a week,
    resources, an image reference the Engine would accept.
    """

    model_config = pydantic.ConfigDict(extra="ignore")

    cmd: str = ""
    workdir: str = DEFAULT_MOUNT_PATH
    timeout_sec: int = 30
    network: NetworkMode = NetworkMode.OFF
    session_id: str
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    image: str = LANGBOT_DEFAULT_IMAGE
    host_path: str | None = None
    host_path_mode: HostMountMode = HostMountMode.READ_WRITE
    mount_path: str = DEFAULT_MOUNT_PATH
    extra_mounts: list[MountSpec] = pydantic.Field(default_factory=list, max_length=MAX_MOUNTS)
    persistent: bool = False
    cpus: float = pydantic.Field(default=1.0, allow_inf_nan=False, le=bounds.MAX_CPUS)
    memory_mb: int = pydantic.Field(default=512, le=bounds.MAX_MEMORY_MB)
    pids_limit: int = pydantic.Field(default=128, le=bounds.MAX_PIDS)
    read_only_rootfs: bool = True
    workspace_quota_mb: int = pydantic.Field(default=0, le=bounds.MAX_QUOTA_MB)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _workdir_defaults_to_mount_path(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("workdir") not in (None, ""):
            return data
        mount_path = data.get("mount_path")
        if isinstance(mount_path, str) and mount_path.strip():
            return {**data, "workdir": mount_path}
        return data

    @pydantic.field_validator("cmd")
    @classmethod
    def _cmd(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("cmd must not contain NUL bytes")
        return bounds.bounded_text(value.strip(), "cmd", bounds.MAX_COMMAND_BYTES)

    @pydantic.field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        return _stripped_absolute_sandbox_path(value, "workdir")

    @pydantic.field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        return _stripped_absolute_sandbox_path(value, "mount_path")

    @pydantic.field_validator("timeout_sec")
    @classmethod
    def _timeout(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("timeout_sec must be greater than 0")
        if value > bounds.MAX_TIMEOUT_SEC:
            raise ValueError(f"timeout_sec must be at most {bounds.MAX_TIMEOUT_SEC} (a week)")
        return value

    @pydantic.field_validator("cpus")
    @classmethod
    def _cpus(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("cpus must be greater than 0")
        if value < bounds.MIN_CPUS:
            raise ValueError(f"cpus must be at least {bounds.MIN_CPUS}")
        return value

    @pydantic.field_validator("memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value < 32:
            raise ValueError("memory_mb must be at least 32")
        return value

    @pydantic.field_validator("pids_limit")
    @classmethod
    def _pids(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pids_limit must be at least 1")
        return value

    @pydantic.field_validator("workspace_quota_mb")
    @classmethod
    def _quota(cls, value: int) -> int:
        if value < 0:
            raise ValueError("workspace_quota_mb must be greater than or equal to 0")
        return value

    @pydantic.field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str) -> str:
        return session_id(value)

    @pydantic.field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return _string_map(value)

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bounds.environment(value)
        return value

    @pydantic.field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return bounds.image_reference(value)

    @pydantic.field_validator("host_path")
    @classmethod
    def _host_path(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_host_path(value, "host_path")

    @pydantic.model_validator(mode="after")
    def _workdir_under_host_mount(self) -> BoxSpec:
        if self.host_path is None or self.host_path_mode == HostMountMode.NONE:
            return self
        if self.workdir != self.mount_path and not self.workdir.startswith(f"{self.mount_path}/"):
            raise ValueError("workdir must stay under mount_path when host_path is provided")
        return self

    def active_extra_mounts(self) -> list[MountSpec]:
        return [m for m in self.extra_mounts if m.mode != HostMountMode.NONE]

    def has_host_mount(self) -> bool:
        return self.host_path is not None and self.host_path_mode != HostMountMode.NONE


# The fields that must match when a request reuses an existing session (reference §D.3).
SESSION_IDENTITY_FIELDS: tuple[str, ...] = (
    "network",
    "image",
    "host_path",
    "host_path_mode",
    "mount_path",
    "persistent",
    "cpus",
    "memory_mb",
    "pids_limit",
    "read_only_rootfs",
    "workspace_quota_mb",
)


class SessionInfo(Model):
    """LangBot's BoxSessionInfo, plus what we know beyond it."""

    session_id: str
    backend_name: str
    backend_session_id: str
    image: str
    network: NetworkMode
    host_path: str | None = None
    host_path_mode: HostMountMode = HostMountMode.READ_WRITE
    mount_path: str = DEFAULT_MOUNT_PATH
    persistent: bool = False
    cpus: float = 1.0
    memory_mb: int = 512
    pids_limit: int = 128
    read_only_rootfs: bool = True
    workspace_quota_mb: int = 0
    created_at: dt.datetime
    last_used_at: dt.datetime
    # Extensions.
    status: SessionStatus = SessionStatus.IDLE
    extra_mounts: list[MountSpec] = pydantic.Field(default_factory=list)
    resolved_image: str | None = None
    workspace_quota_enforced: bool | None = None
    notes: list[str] = pydantic.Field(default_factory=list)
    expires_at: dt.datetime | None = None  # removed then, busy or not (an E2B sandbox's timeout)
    suspended: bool = False  # frozen while idle; the next action thaws it (README: idle suspend)


class SessionDetails(OmitNone, SessionInfo):
    """``box_get_session``: the session, plus its managed processes when it has any (the keys
    are absent otherwise, as in LangBot's answer)."""

    omit_when_none = ("managed_processes", "managed_process")

    managed_processes: dict[str, ManagedProcessInfo] | None = None
    managed_process: ManagedProcessInfo | None = None  # LangBot's "default" process


class ExecResult(Model):
    """LangBot's BoxExecutionResult, plus per-command accounting."""

    session_id: str
    backend_name: str
    status: ExecStatus
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    duration_ms: int
    # Extensions: why and how the command ended, and what it cost.
    end_reason: EndReason = EndReason.EXIT
    signal: int | None = None
    cpu_ms: int | None = None
    peak_rss_kb: int | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == ExecStatus.COMPLETED and self.exit_code == 0


class ManagedProcessSpec(Request):
    model_config = pydantic.ConfigDict(extra="ignore")

    process_id: str = "default"
    command: str
    args: list[str] = pydantic.Field(default_factory=list)
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    cwd: str = DEFAULT_MOUNT_PATH

    @pydantic.field_validator("process_id")
    @classmethod
    def _process_id(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > MAX_PROCESS_ID_CHARS:
            raise ValueError(f"process_id must be 1..{MAX_PROCESS_ID_CHARS} characters")
        return bounds.identifier(value, "process_id")

    @pydantic.field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return bounds.arguments([non_blank(value, "command")], "command")[0]

    @pydantic.field_validator("args", mode="before")
    @classmethod
    def _args(cls, value: Any) -> Any:
        return [str(item) for item in value] if isinstance(value, list) else value

    @pydantic.field_validator("args")
    @classmethod
    def _args_bounded(cls, value: list[str]) -> list[str]:
        return bounds.arguments(value)

    @pydantic.field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return _string_map(value)

    @pydantic.field_validator("env")
    @classmethod
    def _env_bounded(cls, value: dict[str, str]) -> dict[str, str]:
        bounds.environment(value)
        return value

    @pydantic.field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str) -> str:
        return _stripped_absolute_sandbox_path(value, "cwd")


class ManagedProcessInfo(Model):
    session_id: str
    process_id: str = "default"
    status: ManagedProcessStatus
    command: str
    args: list[str]
    cwd: str
    env_keys: list[str]
    attached: bool = False
    started_at: dt.datetime
    exited_at: dt.datetime | None = None
    exit_code: int | None = None
    stderr_preview: str = ""
    # Extensions: bytes of stdout kept for the next relay client; the process id in the sandbox.
    pending_output_bytes: int = 0
    pid: int | None = None


class BackendInfo(Model):
    name: str | None
    available: bool
    # LangBot 0.7: present, and true, only for a backend that runs commands with no isolation.
    unsafe_direct_execution: bool = False
    # Extensions: why, and which limits this backend really enforces.
    reason: str | None = None
    enforced_limits: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.model_serializer(mode="wrap")
    def _unsafe_only_when_true(self, handler: pydantic.SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.unsafe_direct_execution:
            data.pop("unsafe_direct_execution", None)
        return data


class PoolStatus(Model):
    size: int
    ready: int
    hits: int
    misses: int


class RuntimeStatus(Model):
    backend: BackendInfo
    active_sessions: int
    managed_processes: int
    session_ttl_sec: int
    max_sessions: int
    pool: PoolStatus | None = None


class SessionIdRequest(Request):
    model_config = pydantic.ConfigDict(extra="ignore")

    session_id: str

    @pydantic.field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str) -> str:
        return session_id(value)


class ProcessRef(SessionIdRequest):
    process_id: str = "default"

    @pydantic.field_validator("process_id")
    @classmethod
    def _process_id(cls, value: str) -> str:
        return bounds.identifier(value, "process_id", MAX_PROCESS_ID_CHARS)


class OutputChunk(Model):
    """One streamed piece of a command's output (``box_exec_stream``)."""

    kind: Literal["output"] = "output"
    stream: Literal["stdout", "stderr"]
    data: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class StreamedResult(Model):
    """The last message of ``box_exec_stream``: the command's result."""

    kind: Literal["result"] = "result"
    result: ExecResult


# SessionDetails names ManagedProcessInfo, defined after it: resolved when it is first built (Model).


class StartProcessRequest(SessionIdRequest):
    spec: ManagedProcessSpec


class RelayInfo(Model):
    """Where relay clients connect: ``base_url`` is None when it is the control endpoint itself."""

    base_url: str | None
    token: str | None = None  # only for a relay the daemon secured itself (stdio mode)
    path_template: str = "/v1/sessions/{session_id}/managed-process/{process_id}/ws"
