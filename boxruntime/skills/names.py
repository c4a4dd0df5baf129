"""Names: of skills, and of the directories the store creates for them."""

from __future__ import annotations

import os
import re

from boxruntime.errors import BoxValidationError

MAX_NAME_CHARS = 64
# The longest directory name most filesystems take (bytes).
MAX_COMPONENT_BYTES = 255
DEFAULT_UPLOAD_STEM = "uploaded-skill"
_SUFFIX = re.compile(r"[A-Za-z0-9_-]{0,64}")


def validate_skill_name(name: str) -> str:
    """LangBot's rule: non-empty, at most 64 characters, alphanumeric once ``-`` and ``_`` are
    removed (Unicode letters and digits count)."""
    name = str(name or "").strip()
    if not name:
        raise BoxValidationError("Skill name is required")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise BoxValidationError(f"Skill name {name!r} can only contain letters, numbers, hyphens and underscores")
    if len(name) > MAX_NAME_CHARS:
        raise BoxValidationError(f"Skill name cannot exceed {MAX_NAME_CHARS} characters")
    return name


def upload_stem(filename: str) -> str:
    """The target stem for an uploaded zip: its name without extension, other characters as ``-``."""
    stem = os.path.splitext(os.path.basename(str(filename or "").strip()))[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stem).strip("-_")
    return safe or DEFAULT_UPLOAD_STEM


def validate_suffix(suffix: str) -> str:
    # LangBot joined the suffix into a path unchecked, so "../x" escaped the skills root.
    if not _SUFFIX.fullmatch(suffix):
        raise BoxValidationError("target_suffix may only contain letters, digits, '-' and '_' (at most 64)")
    return suffix


def target_dir_name(stem: str, source_path: str, suffix: str) -> str:
    """``<stem>[-<leaf of source_path, if different>][-<suffix>]`` (LangBot's rule), checked to
    be one safe directory name."""
    leaf = source_path.strip("/").split("/")[-1] if source_path.strip("/") else ""
    name = f"{stem}-{leaf}" if leaf and leaf != stem else stem
    if suffix:
        name = f"{name}-{suffix}"
    check_component(name)
    return name


def check_component(name: str) -> str:
    """One path component that cannot climb out of, or hide in, the directory it is joined to."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or name.startswith("."):
        raise BoxValidationError(f"{name!r} is not a usable directory name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
        raise BoxValidationError(f"directory name {name[:40]!r}... is longer than {MAX_COMPONENT_BYTES} bytes")
    return name
