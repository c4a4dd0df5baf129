"""LangBot 0.7's tenant identity on the wire: the action context, and the namespaces that turn a
caller's logical session id into the physical id the runtime keeps (reference §A.9).

Pure functions and small values; the gate and the relay use them, nothing here does I/O.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import pydantic

from boxruntime.errors import BoxValidationError

# LangBot's instance-id format (`normalize_instance_uuid`).
INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_WORKSPACE_ID_CHARS = 256
# Every physical id the 0.7 rules make: "ws-" + 24 hex + "-g" + generation + "-" + sanitised id.
PHYSICAL_ID_PATTERN = re.compile(r"ws-[0-9a-f]{24}-g[0-9]+-")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+")


class ActionContext(pydantic.BaseModel):
    """LangBot 0.7's ``ActionContext``: which instance, workspace and placement a request is for."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    instance_uuid: str
    workspace_uuid: str
    placement_generation: int = 1
    installation_uuid: str | None = None

    @pydantic.field_validator("instance_uuid", "workspace_uuid")
    @classmethod
    def _required(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @pydantic.field_validator("installation_uuid")
    @classmethod
    def _optional(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @pydantic.field_validator("placement_generation")
    @classmethod
    def _generation(cls, value: int) -> int:
        if value < 1:
            raise ValueError("placement_generation must be greater than or equal to 1")
        return value


def normalize_instance_id(value: str) -> str:
    """The instance id, stripped; ValueError unless it has LangBot's format."""
    value = value.strip()
    if not INSTANCE_ID_PATTERN.fullmatch(value):
        raise ValueError("A valid trusted LangBot instance UUID is required")
    return value


@functools.lru_cache(maxsize=4096)  # every tenant request maps its ids: hash a workspace once
def workspace_namespace(instance_uuid: str, workspace_uuid: str) -> str:
    """``ws-<24 hex>``: durable per workspace, the same for every placement generation."""
    digest = hashlib.sha256(f"{instance_uuid}\0{workspace_uuid}".encode()).hexdigest()
    return f"ws-{digest[:24]}"


def sanitize_session_id(logical_id: str) -> str:
    """LangBot's rule: runs of characters outside ``[A-Za-z0-9_.-]`` become ``-``, then ``-`` is
    stripped from both ends."""
    logical_id = logical_id.strip()
    if not logical_id:
        raise BoxValidationError("Box session_id must not be empty")
    safe = _UNSAFE_RUN.sub("-", logical_id).strip("-")
    if not safe:
        raise BoxValidationError("Box session_id must contain a valid character")
    return safe


def is_physical_id(session_id: str) -> bool:
    """Does this id lie in some workspace placement's namespace?"""
    return PHYSICAL_ID_PATTERN.match(session_id) is not None


@dataclass(frozen=True, slots=True)
class Workspace:
    """One LangBot workspace of one instance: the unit the generation fence counts for."""

    instance_uuid: str
    workspace_uuid: str

    @property
    def namespace(self) -> str:
        return workspace_namespace(self.instance_uuid, self.workspace_uuid)

    @property
    def prefix(self) -> str:
        """Shared by the sessions of every placement of this workspace."""
        return f"{self.namespace}-g"


@dataclass(frozen=True, slots=True)
class Placement:
    """One placement generation of a workspace: the scope of a 0.7 request's session ids."""

    workspace: Workspace
    generation: int

    @classmethod
    def of(cls, context: ActionContext) -> Placement:
        return cls(Workspace(context.instance_uuid, context.workspace_uuid), context.placement_generation)

    @property
    def prefix(self) -> str:
        return f"{self.workspace.namespace}-g{self.generation}-"

    def physical(self, logical_id: str) -> str:
        return self.prefix + sanitize_session_id(logical_id)

    def owns(self, physical_id: str) -> bool:
        return physical_id.startswith(self.prefix) and len(physical_id) > len(self.prefix)

    def logical(self, physical_id: str) -> str:
        """The caller's id for a session of this placement; other ids are left as they are."""
        return physical_id[len(self.prefix) :] if physical_id.startswith(self.prefix) else physical_id

    def is_older_sibling(self, physical_id: str) -> bool:
        """A session of an older (or any other) placement of the same workspace."""
        return physical_id.startswith(self.workspace.prefix) and not physical_id.startswith(self.prefix)
