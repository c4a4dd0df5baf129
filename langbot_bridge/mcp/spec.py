"""What an MCP server in a Box session is: ``McpServerSpec`` (and ``McpInstall``, the package to
install into the session first), and the managed-process spec that runs it.

The process id comes from the server's name, safely: a plain name (letters, digits, ``_``,
``-``) gives ``mcp-<name>``; anything else is reduced to such characters and gets a
``.<hash>`` suffix, so two names never share a process id and the id is safe in the relay URL.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
from typing import Any

import pydantic

from boxruntime.models import DEFAULT_MOUNT_PATH, ManagedProcessSpec, non_blank

PROCESS_ID_PREFIX = "mcp-"
MAX_NAME_CHARS = 128
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
HASH_CHARS = 12
INSTALL_MARKER = ".boxruntime-install"


def process_id_for(name: str) -> str:
    """The managed-process id for a server name (injective; URL- and path-safe)."""
    if _PLAIN_NAME.fullmatch(name):
        return PROCESS_ID_PREFIX + name
    readable = _UNSAFE_RUN.sub("-", name)[:40].strip("-") or "server"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{PROCESS_ID_PREFIX}{readable}.{digest}"


class McpInstall(pydantic.BaseModel):
    """pip requirements installed into the session (``pip install --target``) before the server
    starts; skipped when the same install already ran in this session.

    Without ``find_links`` pip downloads from the package index, which needs a session with
    network on. With ``find_links`` (a wheel directory inside the sandbox, e.g. a read-only
    mount) pip uses only those wheels and needs no network. The image must have pip, or
    ``pip`` must name one the sandbox can run (e.g. a mounted copy on ``PYTHONPATH``).
    A plain string or list is accepted as the requirements.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    requirements: list[str] = pydantic.Field(min_length=1)
    find_links: str | None = None
    pip: list[str] = pydantic.Field(default_factory=lambda: ["python3", "-m", "pip"], min_length=1)
    target: str | None = None  # default: <cwd>/.mcp/<process id>/site
    timeout_sec: int = pydantic.Field(default=300, ge=1)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"requirements": [data]}
        if isinstance(data, list | tuple):
            return {"requirements": list(data)}
        return data

    @pydantic.field_validator("requirements")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        cleaned = [item.strip() for item in value]
        for item in cleaned:
            # A requirement starting with "-" would be a pip option (e.g. --index-url).
            if not item or item.startswith("-") or "\n" in item or "\0" in item:
                raise ValueError(f"not a pip requirement: {item!r}")
        return cleaned

    @pydantic.field_validator("find_links", "target")
    @classmethod
    def _sandbox_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path inside the sandbox")
        return value

    def digest(self) -> str:
        """Identifies this install: the marker a finished install leaves behind."""
        text = json.dumps([self.requirements, self.find_links, self.pip], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self) -> str:
        """The requirements, as one line for messages and the audit log."""
        return " ".join(self.requirements)


class McpServerSpec(pydantic.BaseModel):
    """A stdio MCP server to run in a session: the command, as it would run on a host."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str
    command: str
    args: list[str] = pydantic.Field(default_factory=list)
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    cwd: str = DEFAULT_MOUNT_PATH
    install: McpInstall | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
            raise ValueError(f"name must be 1..{MAX_NAME_CHARS} printable characters")
        return value

    @pydantic.field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        return non_blank(value, "command")

    @pydantic.field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str) -> str:
        if not value.startswith("/") or "\0" in value:
            raise ValueError("cwd must be an absolute path inside the sandbox")
        return value

    @property
    def process_id(self) -> str:
        """The managed-process id this server runs as (``process_id_for`` its name)."""
        return process_id_for(self.name)

    def install_target(self) -> str | None:
        """Where ``install`` puts the packages in the sandbox, or None without one."""
        if self.install is None:
            return None
        return self.install.target or posixpath.join(self.cwd, ".mcp", self.process_id, "site")

    def process_spec(self) -> ManagedProcessSpec:
        """The managed process: the command as given, or, with an install, wrapped so the
        installed packages and their scripts come first on ``PYTHONPATH`` and ``PATH``."""
        target = self.install_target()
        if target is None:
            return ManagedProcessSpec(
                process_id=self.process_id, command=self.command, args=self.args, env=self.env, cwd=self.cwd
            )
        env = dict(self.env)
        env["PYTHONPATH"] = f"{target}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else target
        # PATH through the shell, not env: the sandbox's own PATH is the daemon's business.
        script = f'export PATH={shlex.quote(target + "/bin")}:"$PATH"; exec "$0" "$@"'
        return ManagedProcessSpec(
            process_id=self.process_id,
            command="sh",
            args=["-c", script, self.command, *self.args],
            env=env,
            cwd=self.cwd,
        )
