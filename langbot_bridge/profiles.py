"""Box profiles and the policy they apply to a request before anything reaches the daemon.

A profile (``profiles/<name>.toml``) gives the sandbox defaults for a chat — image, network,
limits — the longest timeout a request may ask for, and the fields a request may not change
(``locked``). Building a spec merges, in this order (reference §E.3):

    profile defaults  ->  the request  ->  locked fields (profile values again)

then clamps ``timeout_sec`` to ``max_timeout_sec`` and checks every host mount against the
allow-list, so a refused mount is never sent.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from boxruntime.errors import BoxValidationError
from boxruntime.models import DEFAULT_IMAGE, BoxSpec, HostMountMode, NetworkMode

log = logging.getLogger(__name__)

# profiles/ at the top of the source tree (shipped beside the package).
# Shipped inside the package (so a wheel has them); the repository's profiles/ links here.
BUILTIN_PROFILES_DIR = Path(__file__).resolve().parent / "builtin_profiles"
BUILTIN_PROFILE_NAMES = ("default", "offline_readonly", "network_basic", "network_extended")

# The spec fields a profile sets; the only ones ``locked`` may name.
PROFILE_SPEC_FIELDS: tuple[str, ...] = (
    "image",
    "network",
    "timeout_sec",
    "host_path_mode",
    "cpus",
    "memory_mb",
    "pids_limit",
    "read_only_rootfs",
    "workspace_quota_mb",
)


class BoxProfile(pydantic.BaseModel):
    """LangBot's BoxProfile (reference §C.7), with our image as the default."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str
    image: str = DEFAULT_IMAGE
    network: NetworkMode = NetworkMode.OFF
    timeout_sec: int = pydantic.Field(default=30, ge=1)
    max_timeout_sec: int = pydantic.Field(default=120, ge=1)
    host_path_mode: HostMountMode = HostMountMode.READ_WRITE
    cpus: float = pydantic.Field(default=1.0, gt=0)
    memory_mb: int = pydantic.Field(default=512, ge=32)
    pids_limit: int = pydantic.Field(default=128, ge=1)
    read_only_rootfs: bool = True
    workspace_quota_mb: int = pydantic.Field(default=0, ge=0)
    locked: frozenset[str] = frozenset()

    @pydantic.field_validator("locked")
    @classmethod
    def _locked(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - set(PROFILE_SPEC_FIELDS))
        if unknown:
            raise ValueError(f"locked names unknown fields {unknown}; lockable: {', '.join(PROFILE_SPEC_FIELDS)}")
        return value

    @pydantic.model_validator(mode="after")
    def _default_timeout_within_max(self) -> BoxProfile:
        if self.timeout_sec > self.max_timeout_sec:
            raise ValueError(f"timeout_sec {self.timeout_sec} exceeds max_timeout_sec {self.max_timeout_sec}")
        return self

    def defaults(self) -> dict[str, Any]:
        """The spec fields this profile sets, by name."""
        return {name: getattr(self, name) for name in PROFILE_SPEC_FIELDS}


def load_profile_file(path: Path) -> BoxProfile:
    """One profile; its name is the file name without ``.toml``."""
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BoxValidationError(f"cannot read profile {path}: {exc}") from None
    if "name" in values and values["name"] != path.stem:
        raise BoxValidationError(f"profile {path}: name {values['name']!r} differs from the file name {path.stem!r}")
    try:
        return BoxProfile.model_validate({**values, "name": path.stem})
    except pydantic.ValidationError as exc:
        raise BoxValidationError(f"invalid profile {path}: {exc}") from None


def load_profiles(extra_dirs: Iterable[Path] = (), builtin_dir: Path = BUILTIN_PROFILES_DIR) -> dict[str, BoxProfile]:
    """The built-in profiles, then every ``*.toml`` of ``extra_dirs`` in order.

    A user file with a built-in's name replaces it (logged), so operators can tighten
    ``default`` without forking the package.
    """
    profiles: dict[str, BoxProfile] = {}
    for directory in (builtin_dir, *extra_dirs):
        if not directory.is_dir():
            raise BoxValidationError(f"profile directory {directory} does not exist")
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile_file(path)
            if profile.name in profiles:
                log.info("profile %s from %s replaces an earlier definition", profile.name, path)
            profiles[profile.name] = profile
    missing = [name for name in BUILTIN_PROFILE_NAMES if name not in profiles]
    if missing:
        raise BoxValidationError(f"built-in profiles missing from {builtin_dir}: {', '.join(missing)}")
    return profiles


# ── spec building ────────────────────────────────────────────────────────

REQUEST_FIELDS = frozenset(BoxSpec.model_fields) - {"session_id"}


def merge_spec(profile: BoxProfile, session_id: str, request: Mapping[str, Any]) -> BoxSpec:
    """Profile defaults <- request <- locked fields; ``timeout_sec`` clamped to the profile's max.

    ``request`` uses BoxSpec's field names; the session id is the caller's (from a template or
    given explicitly), never the request's.
    """
    unknown = sorted(set(request) - REQUEST_FIELDS)
    if unknown:
        raise BoxValidationError(f"unknown spec fields {unknown} (session_id comes from the session scope)")
    merged: dict[str, Any] = {**profile.defaults(), **request}
    for name in profile.locked:
        merged[name] = getattr(profile, name)
    timeout = merged["timeout_sec"]
    if isinstance(timeout, int) and not isinstance(timeout, bool):
        merged["timeout_sec"] = min(timeout, profile.max_timeout_sec)
    merged["session_id"] = session_id
    try:
        return BoxSpec.model_validate(merged)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "spec"
        raise BoxValidationError(f"invalid box spec: {where}: {first['msg']}") from None


class MountPolicy:
    """Host paths may be mounted only at or under an allowed root (after ``realpath``).

    Checked on the bridge side for every mount — ``host_path`` and each extra mount — before
    a request is sent; the daemon applies its own allow-list and denylist again.
    """

    def __init__(self, allowed_roots: Sequence[Path | str]) -> None:
        self.roots = tuple(os.path.realpath(root) for root in allowed_roots)

    def allows(self, host_path: str) -> bool:
        """Whether ``host_path`` (after realpath) lies at or under an allowed root."""
        real = os.path.realpath(host_path)
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.roots)

    def check(self, spec: BoxSpec) -> None:
        """BoxValidationError naming the first mount of ``spec`` outside the allowed roots."""
        mounts: list[tuple[str, str]] = []
        if spec.has_host_mount():
            assert spec.host_path is not None
            mounts.append(("host_path", spec.host_path))
        mounts += [(f"extra_mounts[{i}]", m.host_path) for i, m in enumerate(spec.active_extra_mounts())]
        if mounts and not self.roots:
            raise BoxValidationError(
                "host path mounting is disabled because no allowed mount roots are configured"
                f" (refused {mounts[0][0]} {mounts[0][1]})"
            )
        for where, path in mounts:
            if not self.allows(path):
                raise BoxValidationError(f"{where} {path} is outside the allowed mount roots ({', '.join(self.roots)})")
