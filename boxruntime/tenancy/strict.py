"""LangBot 0.7's stricter request models (reference §C.2, §C.3): what a 0.7 client's request must
satisfy beyond the 0.5 rules the daemon's own models keep.

- BoxSpec refuses unknown keys (``extra="forbid"``).
- A mount at or under ``/opt/langbot-artifacts`` must be content-addressed: read-only, with a
  digest and a manifest, at ``/opt/langbot-artifacts/<hex of the digest>``.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import pydantic

from boxruntime.models import BoxSpec, HostMountMode, MountSpec
from boxruntime.payloads import parse

ARTIFACT_MOUNT_ROOT = "/opt/langbot-artifacts"
CONTENT_DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


class StrictMountSpec(MountSpec):
    model_config = pydantic.ConfigDict(extra="forbid")

    content_digest: str | None = None
    manifest_path: str | None = None

    @pydantic.field_validator("content_digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not CONTENT_DIGEST_PATTERN.fullmatch(value):
            raise ValueError("content_digest must look like sha256:<64 lowercase hex>")
        return value

    @pydantic.field_validator("manifest_path")
    @classmethod
    def _manifest(cls, value: str | None) -> str | None:
        if value is not None and not posixpath.isabs(value.strip()):
            raise ValueError("manifest_path must be an absolute host path")
        return None if value is None else value.strip()

    @pydantic.model_validator(mode="after")
    def _artifact_root_is_content_addressed(self) -> StrictMountSpec:
        path = posixpath.normpath(self.mount_path)
        under_root = path == ARTIFACT_MOUNT_ROOT or path.startswith(f"{ARTIFACT_MOUNT_ROOT}/")
        if under_root and not is_content_addressed(self):
            raise ValueError(f"mounts under {ARTIFACT_MOUNT_ROOT} must be content-addressed read-only packages")
        return self


def is_content_addressed(mount: StrictMountSpec) -> bool:
    if mount.mode != HostMountMode.READ_ONLY or mount.content_digest is None or mount.manifest_path is None:
        return False
    return mount.mount_path == f"{ARTIFACT_MOUNT_ROOT}/{mount.content_digest.removeprefix('sha256:')}"


class StrictBoxSpec(BoxSpec):
    model_config = pydantic.ConfigDict(extra="forbid")

    extra_mounts: list[StrictMountSpec] = pydantic.Field(default_factory=list)  # type: ignore[assignment]


def check_box_spec(data: dict[str, Any]) -> None:
    """Raise BoxValidationError (pydantic's full text) unless ``data`` is a valid 0.7 BoxSpec."""
    parse(StrictBoxSpec, data)
