"""``gateway.toml``: every setting of the chat gateway, checked at start-up.

The sections shared by every deployment are typed here (``[gateway]``, ``[server]``,
``[store]``, ``[outbox]``, ``[box]``). ``[agent]`` and each ``[[channel]]`` are typed by their
``kind``: the kind's own model (registered with the agent or channel) checks the table, so a new
kind brings its settings without a change here.

Secrets never appear in the file: a setting ending in ``_env`` names the environment variable
that holds it, read once at start-up (``read_secret``). Relative paths are taken from the config
file's directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic

from boxruntime.errors import BoxValidationError
from boxruntime.models import MountSpec


class GatewayConfigError(BoxValidationError):
    """The gateway configuration is missing, malformed or refers to something that is not there."""


class Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def read_secret(env: str | None, what: str, *, required: bool) -> str | None:
    """The value of environment variable ``env``; a clear error when it is required and unset.
    The value is never logged; only the variable's name appears in messages."""
    if not env:
        if required:
            raise GatewayConfigError(f"{what} is required: name the environment variable that holds it")
        return None
    value = os.environ.get(env, "")
    if not value:
        if required:
            raise GatewayConfigError(f"{what}: environment variable {env} is not set")
        return None
    return value


class GatewaySection(Section):
    name: str = "gateway"  # the bot's name: the MCP hub's scope, log lines
    data_dir: Path = Path("gateway-data")
    max_concurrent_turns: int = pydantic.Field(default=16, ge=1, le=1024)
    max_pending_per_channel: int = pydantic.Field(default=10_000, ge=1)  # above: HTTP 503, not a crash
    turn_timeout_sec: float = pydantic.Field(default=600, gt=0)
    box_wait_sec: float = pydantic.Field(default=60, ge=0)  # how long a turn waits for an unavailable daemon
    stream_interval_sec: float = pydantic.Field(default=0.5, ge=0)  # at most one streamed frame this often
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"  # auto: uvloop where installed


class ServerSection(Section):
    host: str = "127.0.0.1"
    port: int = pydantic.Field(default=8780, ge=0, le=65535)
    public_url: str | None = None  # how platforms reach us, for file download URLs
    diagnostics_token_env: str | None = None
    admin_token_env: str | None = None  # enables POST /admin/send
    max_inflight: int = pydantic.Field(default=512, ge=1)  # concurrent inbound requests before 503

    @pydantic.field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")


class StoreSection(Section):
    path: Path = Path("gateway.sqlite3")  # under [gateway] data_dir unless absolute
    synchronous: Literal["full", "normal"] = "full"
    dedup_retention_hours: float = pydantic.Field(default=72, gt=0)
    dead_letter_retention_hours: float = pydantic.Field(default=168, gt=0)
    file_url_ttl_hours: float = pydantic.Field(default=24, gt=0)
    history_max_messages: int = pydantic.Field(default=40, ge=0)
    history_max_chars: int = pydantic.Field(default=40_000, ge=0)


class OutboxSection(Section):
    max_attempts: int = pydantic.Field(default=8, ge=1)
    backoff_initial_sec: float = pydantic.Field(default=1.0, gt=0)
    backoff_max_sec: float = pydantic.Field(default=300.0, gt=0)
    jitter: float = pydantic.Field(default=0.25, ge=0, le=1)
    max_concurrent_sends: int = pydantic.Field(default=32, ge=1)


SCOPES = {
    "chat": "gw_{platform}_{launcher_type}_{launcher_id}",
    "user": "gw_{platform}_user_{sender_id}",
    "bot": "gw_{platform}",
}


class BoxSection(Section):
    endpoint: str = "stdio"  # "stdio" spawns a local daemon; else ws://host:port
    token_env: str | None = "BOXRUNTIME_TOKEN"
    profile: str = "default"
    profile_dirs: list[Path] = pydantic.Field(default_factory=list)
    scope: str = "chat"  # chat, user, bot, or a session id template
    image: str | None = None
    skills: list[str] = pydantic.Field(default_factory=list)  # installed skills mounted in every chat's sandbox
    # Host directories bind-mounted into every chat's sandbox, each with its mode ("ro" or "rw",
    # the default as in LangBot's mount spec), e.g. an ACP agent's packages; each must lie under
    # allowed_mount_roots.
    extra_mounts: list[MountSpec] = pydantic.Field(default_factory=list)
    allowed_mount_roots: list[Path] = pydantic.Field(default_factory=list)
    output_limit: int = pydantic.Field(default=4000, ge=100)
    # A spawned daemon's own settings (endpoint = "stdio" only).
    backend: str | None = None
    data_dir: Path | None = None

    @property
    def template(self) -> str:
        return SCOPES.get(self.scope, self.scope)

    def session_defaults(self) -> dict[str, Any] | None:
        """The spec fields every chat session starts from: the image, the extra mounts."""
        defaults: dict[str, Any] = {}
        if self.image:
            defaults["image"] = self.image
        if self.extra_mounts:
            defaults["extra_mounts"] = [m.model_dump(mode="json") for m in self.extra_mounts]
        return defaults or None


class KindSection(pydantic.BaseModel):
    """``[agent]`` or a ``[[channel]]`` before its kind's model checks it."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)

    kind: str


class ChannelSection(KindSection):
    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9-]{1,32}$")


class GatewayConfig(Section):
    gateway: GatewaySection = GatewaySection()
    server: ServerSection = ServerSection()
    store: StoreSection = StoreSection()
    outbox: OutboxSection = OutboxSection()
    box: BoxSection = BoxSection()
    agent: KindSection = KindSection(kind="command")
    channel: list[ChannelSection] = pydantic.Field(default_factory=list)
    base_dir: Path = Path(".")  # the config file's directory

    @pydantic.model_validator(mode="after")
    def _unique_channels(self) -> GatewayConfig:
        names = [c.name for c in self.channel]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique; repeated: {', '.join(dupes)}")
        return self

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else (self.base_dir / value)

    @property
    def data_dir(self) -> Path:
        return self.path(self.gateway.data_dir)

    @property
    def store_path(self) -> Path:
        path = self.store.path
        return path if path.is_absolute() else self.data_dir / path


def parse_config(values: dict[str, Any], base_dir: Path) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate({**values, "base_dir": base_dir})
    except pydantic.ValidationError as exc:
        raise GatewayConfigError(describe(exc, "gateway config")) from None


def load_config(path: Path) -> GatewayConfig:
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except OSError as exc:
        raise GatewayConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{path} is not valid TOML: {exc}") from None
    if "base_dir" in values:
        raise GatewayConfigError(f"{path}: base_dir is not a setting")
    return parse_config(values, path.resolve().parent)


def describe(exc: pydantic.ValidationError, what: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or what
        problems.append(f"{where}: {error['msg']}")
    return f"invalid {what}: " + "; ".join(problems)


def validate_kind(model: type[pydantic.BaseModel], section: KindSection, what: str) -> Any:
    """``section`` checked by its kind's model (unknown keys refused there)."""
    try:
        return model.model_validate(section.model_dump())
    except pydantic.ValidationError as exc:
        raise GatewayConfigError(describe(exc, what)) from None
