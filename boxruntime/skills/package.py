"""Finding skill packages on disk and reading one into a ``Skill``.

A directory is a skill if it holds a regular file ``SKILL.md`` (else ``skill.md``); discovery is
breadth-first over sorted names and does not go below a skill (reference §D.14). Unlike LangBot
0.5, neither discovery nor loading follows a symlink: a ``SKILL.md`` linked to /etc/passwd is
not a skill, and a linked directory is not searched.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxruntime.errors import BoxValidationError
from boxruntime.models import Skill
from boxruntime.skills import frontmatter
from boxruntime.skills.fileio import read_regular_file
from boxruntime.skills.manifest import HashCache, Manifest, ManifestLimits, build_manifest

ENTRY_FILES = ("SKILL.md", "skill.md")
# The store's own work directories inside the skills root; never skills, never listed.
STAGING_PREFIX = ".boxruntime-staging-"
MAX_TEXT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoadedPackage:
    skill: Skill
    metadata: dict[Any, Any]  # the frontmatter as YAML loaded it, for rewriting
    manifest: Manifest


def find_entry_file(directory: Path) -> str | None:
    for name in ENTRY_FILES:
        try:
            if stat.S_ISREG(os.lstat(directory / name).st_mode):
                return name
        except OSError:
            continue
    return None


def discover(start: Path, max_depth: int) -> list[tuple[Path, str]]:
    """(package root, entry file) of every skill under ``start``, at most ``max_depth`` down."""
    found: list[tuple[Path, str]] = []
    queue = collections.deque([(start, 0)])
    while queue:
        current, depth = queue.popleft()
        entry = find_entry_file(current)
        if entry is not None:
            found.append((current, entry))
            continue
        if depth >= max_depth:
            continue
        try:
            with os.scandir(current) as entries:
                children = sorted(
                    e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(STAGING_PREFIX)
                )
        except OSError:
            continue
        queue.extend((current / name, depth + 1) for name in children)
    return found


class PackageLoader:
    """Reads packages into ``Skill`` objects, re-hashing only files that changed since last time."""

    def __init__(self, limits: ManifestLimits | None = None, max_text_bytes: int = MAX_TEXT_BYTES) -> None:
        self.limits = limits or ManifestLimits()
        self.max_text_bytes = max_text_bytes
        self._hashes = HashCache()

    def read_text(self, path: Path, what: str) -> str:
        data = read_regular_file(path, self.max_text_bytes, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BoxValidationError(f"{what} is not valid UTF-8 text") from None

    def manifest(self, package_root: Path) -> Manifest:
        return build_manifest(package_root, self.limits, self._hashes)

    def load(self, package_root: Path, entry_file: str) -> LoadedPackage:
        """``package_root`` must be a realpath; it is reported as the skill's ``package_root``."""
        entry_path = package_root / entry_file
        metadata, instructions = frontmatter.parse(self.read_text(entry_path, f"{entry_path}"))
        manifest = self.manifest(package_root)
        info = os.lstat(entry_path)
        dir_name = package_root.name
        skill = Skill(
            name=str(metadata.get("name") or dir_name).strip(),
            display_name=str(metadata.get("display_name") or metadata.get("name") or dir_name).strip(),
            description=str(metadata.get("description") or "").strip(),
            instructions=instructions,
            package_root=str(package_root),
            entry_file=entry_file,
            created_at=dt.datetime.fromtimestamp(info.st_ctime, tz=dt.UTC),
            updated_at=dt.datetime.fromtimestamp(info.st_mtime, tz=dt.UTC),
            digest=manifest.digest,
            frontmatter=frontmatter.extra_fields(metadata),
            file_count=manifest.file_count,
            total_bytes=manifest.total_bytes,
        )
        return LoadedPackage(skill, metadata, manifest)
