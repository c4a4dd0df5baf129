"""The skill store: packages under one managed root, with LangBot 0.5's semantics (reference §D.14).

What differs from LangBot 0.5, on purpose:

* every change is staged in ``<root>/.boxruntime-staging-*`` and published with one rename, so
  a failure leaves the root as it was (0.5 left half-copied packages behind);
* no symlink is followed, neither when listing, reading, copying nor deleting, and packages
  holding links, devices or FIFOs are refused (and left out of listings);
* uploaded zips go through ``archive``'s caps; installed skills must have valid, unique names;
* SKILL.md keeps frontmatter keys it does not know; each skill reports a content ``digest``;
* deleting a skill that shares its top-level directory with other skills removes only its own
  package (0.5 removed the whole top-level directory, siblings included).

Blocking: call from a worker thread. Mutations hold one lock; reads take none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from boxruntime.errors import BoxValidationError
from boxruntime.models import (
    Skill,
    SkillFields,
    SkillFileContent,
    SkillFileEntry,
    SkillFileListing,
    SkillFileWritten,
    SkillPreview,
    SkillRef,
    SkillUpdate,
)
from boxruntime.security import check_host_path
from boxruntime.skills import frontmatter
from boxruntime.skills.archive import ZipLimits
from boxruntime.skills.fileio import (
    copy_regular_file,
    executable_mode,
    is_inside,
    resolve_inside,
    write_atomic,
)
from boxruntime.skills.manifest import Manifest, ManifestLimits
from boxruntime.skills.names import upload_stem, validate_skill_name, validate_suffix
from boxruntime.skills.package import (
    ENTRY_FILES,
    MAX_TEXT_BYTES,
    STAGING_PREFIX,
    LoadedPackage,
    PackageLoader,
    discover,
    find_entry_file,
)
from boxruntime.skills.zipinstall import Candidate, find_candidates, select, unpack

log = logging.getLogger(__name__)

LIST_DEPTH = 6
SCAN_DEPTH = 2
# Long enough that no operation is still using a staging directory this old.
STALE_STAGING_SEC = 3600.0


class SkillStore:
    def __init__(
        self,
        root: Path | Callable[[], Path],
        *,
        zip_limits: ZipLimits | None = None,
        package_limits: ManifestLimits | None = None,
        max_text_bytes: int = MAX_TEXT_BYTES,
    ) -> None:
        # A callable follows settings that box_init may change (host_root, skills_root).
        self._root_source = root
        self.zip_limits = zip_limits or ZipLimits()
        self.loader = PackageLoader(package_limits, max_text_bytes)
        self._lock = threading.RLock()
        self._active_staging: set[Path] = set()

    @property
    def configured_root(self) -> Path:
        root = self._root_source() if callable(self._root_source) else self._root_source
        return Path(os.path.abspath(root))

    @property
    def root(self) -> Path:
        """The managed root as a realpath; created on first use, as LangBot does."""
        configured = self.configured_root
        configured.mkdir(parents=True, exist_ok=True)
        return Path(os.path.realpath(configured))

    # ── reading ──────────────────────────────────────────────────────────

    def list_skills(self) -> list[Skill]:
        skills = []
        for package_root, entry_file in discover(self.root, LIST_DEPTH):
            try:
                skills.append(self.loader.load(package_root, entry_file).skill)
            except (BoxValidationError, OSError) as exc:
                log.warning("skill package %s left out of the list: %s", package_root, exc)
        skills.sort(key=lambda skill: skill.updated_at, reverse=True)
        return skills

    def get_skill(self, name: str) -> Skill | None:
        return next((skill for skill in self.list_skills() if skill.name == name), None)

    def require(self, name: str) -> Skill:
        skill = self.get_skill(name)
        if skill is None:
            raise BoxValidationError(f'Skill "{name}" not found')
        return skill

    def scan(self, path: str) -> Skill:
        """The one skill in ``path`` or at most two levels below it (``path`` may be anywhere)."""
        start = Path(check_host_path(str(path), [Path("/")], "path"))
        if not start.is_dir():
            raise BoxValidationError(f"Directory does not exist: {path}")
        found = discover(start, SCAN_DEPTH)
        if not found:
            raise BoxValidationError(f"No SKILL.md found in {path} or its subdirectories (max depth: {SCAN_DEPTH})")
        if len(found) > 1:
            listed = ", ".join(str(root) for root, _ in found)
            raise BoxValidationError(
                f"Multiple skill directories found in {path}. Please choose a more specific path: {listed}"
            )
        return self.loader.load(*found[0]).skill

    # ── create / update / delete ─────────────────────────────────────────

    def create(self, fields: SkillFields) -> Skill:
        with self._lock:
            name = validate_skill_name(fields.name)
            if self.get_skill(name) is not None:
                raise BoxValidationError(f'Skill with name "{name}" already exists')
            root = self.root
            requested = (fields.package_root or "").strip()
            source = Path(os.path.realpath(requested)) if requested else None
            if source is not None and source != root and is_inside(str(source), str(root)):
                return self._adopt(source, name, fields)
            if source is not None:
                return self._import(source, root / name, name, fields)
            return self._create_empty(root / name, name, fields)

    def _adopt(self, package_root: Path, name: str, fields: SkillFields) -> Skill:
        """A package already under the root becomes the skill in place (LangBot's rule)."""
        root = self.root
        relative = package_root.relative_to(root)
        if relative.parts[0].startswith(STAGING_PREFIX):
            raise BoxValidationError("package_root is inside the store's staging area")
        if len(relative.parts) > LIST_DEPTH or any(
            find_entry_file(root.joinpath(*relative.parts[:i])) for i in range(1, len(relative.parts))
        ):
            raise BoxValidationError(f"{package_root} is too deep or inside another skill; it would not be listed")
        existing = self._load_existing(package_root)
        self._write_entry(
            package_root, _merged_metadata(name, fields, existing), _merged_instructions(fields, existing)
        )
        return self.loader.load(package_root, "SKILL.md").skill

    def _import(self, source: Path, target: Path, name: str, fields: SkillFields) -> Skill:
        """A package elsewhere on the host is copied in (regular files only, within the caps)."""
        check_host_path(str(source), [Path("/")], "package_root")
        if is_inside(str(self.root), str(source)):
            raise BoxValidationError(f"package_root {source} contains the skills root; choose the package itself")
        existing = self._load_existing(source)
        if os.path.lexists(target):
            raise BoxValidationError(f"Skill directory already exists: {target}")
        with self._staging() as stage:
            staged = stage / "package"
            _copy_tree(source, staged, existing.manifest)
            self._write_entry(staged, _merged_metadata(name, fields, existing), _merged_instructions(fields, existing))
            self._publish(staged, target)
        return self.loader.load(target, "SKILL.md").skill

    def _create_empty(self, target: Path, name: str, fields: SkillFields) -> Skill:
        if os.path.lexists(target):
            raise BoxValidationError(f"Skill directory already exists: {target} (pass it as package_root to adopt it)")
        with self._staging() as stage:
            staged = stage / "package"
            os.mkdir(staged, 0o755)
            self._write_entry(staged, _merged_metadata(name, fields, None), _merged_instructions(fields, None))
            self._publish(staged, target)
        return self.loader.load(target, "SKILL.md").skill

    def _load_existing(self, package_root: Path) -> LoadedPackage:
        if not package_root.is_dir():
            raise BoxValidationError(f"Directory does not exist: {package_root}")
        entry_file = find_entry_file(package_root)
        if entry_file is None:
            raise BoxValidationError(f"No SKILL.md found in {package_root}")
        return self.loader.load(package_root, entry_file)

    def update(self, name: str, fields: SkillUpdate) -> Skill:
        with self._lock:
            skill = self.require(name)
            if str(fields.name or skill.name).strip() != skill.name:
                raise BoxValidationError("Renaming skills is not supported")
            requested_root = (fields.package_root or "").strip()
            if requested_root and os.path.realpath(requested_root) != skill.package_root:
                raise BoxValidationError(
                    "Updating package_root is not supported; recreate the skill to import a different package"
                )
            given = fields.model_fields_set
            package_root = Path(skill.package_root)
            current = self.loader.load(package_root, skill.entry_file)
            metadata: dict[Any, Any] = {
                **current.metadata,
                "name": skill.name,
                "display_name": fields.display_name if "display_name" in given else skill.display_name,
                "description": fields.description if "description" in given else skill.description,
            }
            instructions = (fields.instructions if "instructions" in given else skill.instructions) or ""
            self._write_entry(package_root, metadata, instructions)
            return self.require(name)

    def delete(self, name: str) -> str:
        with self._lock:
            skill = self.require(name)
            root = self.root
            package_root = Path(skill.package_root)
            if package_root == root or not is_inside(str(package_root), str(root)):
                raise BoxValidationError("Only managed skills under the Box skills root can be deleted")
            top = root / package_root.relative_to(root).parts[0]
            if not stat.S_ISDIR(os.lstat(top).st_mode):
                raise BoxValidationError(f"{top} is not a directory; refusing to delete through it")
            siblings = [found for found, _ in discover(top, LIST_DEPTH) if found != package_root]
            victim = package_root if siblings else top
            # Renamed away first, so the skill disappears at once even if removal is slow or fails.
            with self._staging() as stage:
                os.rename(victim, stage / "deleted")
            return name

    # ── files inside a package ───────────────────────────────────────────

    def list_files(
        self, name: str, path: str = ".", include_hidden: bool = False, max_entries: int = 200
    ) -> SkillFileListing:
        skill = self.require(name)
        target, relative = resolve_inside(skill.package_root, path)
        if not os.path.isdir(target):
            raise BoxValidationError(f"Skill directory not found: {relative}")
        entries: list[SkillFileEntry] = []
        with os.scandir(target) as scanned:
            for entry in sorted(scanned, key=lambda item: item.name):
                if not include_hidden and entry.name.startswith("."):
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                entries.append(
                    SkillFileEntry(
                        path=entry.name if relative == "." else f"{relative}/{entry.name}",
                        name=entry.name,
                        is_dir=is_dir,
                        size=None if is_dir else entry.stat(follow_symlinks=False).st_size,
                    )
                )
                if len(entries) >= max_entries:
                    break
        return SkillFileListing(
            skill=SkillRef(name=skill.name),
            base_path=relative,
            entries=entries,
            # LangBot's rule: also true when the count merely reaches max_entries.
            truncated=len(entries) >= max_entries,
        )

    def read_file(self, name: str, path: str) -> SkillFileContent:
        skill = self.require(name)
        target, relative = resolve_inside(skill.package_root, path)
        if not os.path.isfile(target):
            raise BoxValidationError(f"Skill file not found: {relative}")
        content = self.loader.read_text(Path(target), f"Skill file {relative}")
        return SkillFileContent(skill=SkillRef(name=skill.name), path=relative, content=content)

    def write_file(self, name: str, path: str, content: str) -> SkillFileWritten:
        with self._lock:
            skill = self.require(name)
            package_root = skill.package_root
            target, relative = resolve_inside(package_root, path)
            if target == package_root or os.path.isdir(target):
                raise BoxValidationError(f"path must name a file, not a directory: {relative}")
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:
                raise BoxValidationError("content is not valid Unicode text") from None
            self._check_room(Path(package_root), len(data))
            if os.path.dirname(target) == package_root and os.path.basename(target) in ENTRY_FILES:
                # An unparsable SKILL.md would make the skill vanish from every listing.
                frontmatter.parse(content)
            parent = os.path.dirname(target)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if not is_inside(os.path.realpath(parent), package_root):
                raise BoxValidationError("path must stay within the skill package root")
            try:
                mode = executable_mode(os.lstat(target).st_mode)
            except FileNotFoundError:
                mode = 0o644
            write_atomic(target, data, mode)
            return SkillFileWritten(skill=SkillRef(name=skill.name), path=relative, bytes_written=len(data))

    def _check_room(self, package_root: Path, adding: int) -> None:
        if adding > self.loader.max_text_bytes:
            raise BoxValidationError(f"content is larger than {self.loader.max_text_bytes} bytes")
        manifest = self.loader.manifest(package_root)
        if manifest.total_bytes + adding > self.loader.limits.max_bytes:
            raise BoxValidationError("the skill package would exceed its size limit")

    # ── zip uploads ──────────────────────────────────────────────────────

    def preview_zip(
        self, archive: Path, *, filename: str, source_subdir: str = "", target_suffix: str = "upload"
    ) -> list[SkillPreview]:
        suffix = validate_suffix(target_suffix)
        with self._staging() as stage:
            base = unpack(archive, stage, source_subdir, self.zip_limits)
            candidates = find_candidates(base, self.loader, self.root, upload_stem(filename), suffix)
            return [candidate.preview for candidate in candidates]

    def install_zip(
        self,
        archive: Path,
        *,
        filename: str,
        source_paths: list[str] | None = None,
        source_path: str = "",
        source_subdir: str = "",
        target_suffix: str = "upload",
    ) -> list[Skill]:
        suffix = validate_suffix(target_suffix)
        with self._staging() as stage:
            base = unpack(archive, stage, source_subdir, self.zip_limits)
            candidates = find_candidates(base, self.loader, self.root, upload_stem(filename), suffix)
            selected = select(candidates, source_paths or [], source_path)
            with self._lock:
                self._check_targets(selected)
                return self._publish_all(selected)

    def _check_targets(self, selected: list[Candidate]) -> None:
        root = self.root
        taken = {skill.name for skill in self.list_skills()}
        targets: set[str] = set()
        for candidate in selected:
            target = root / candidate.target_name
            if candidate.target_name in targets:
                raise BoxValidationError(f"Duplicate target directory selected: {target}")
            if os.path.lexists(target):
                raise BoxValidationError(f"Skill directory already exists: {target}")
            targets.add(candidate.target_name)
            name = validate_skill_name(candidate.declared_name or candidate.target_name)
            if name in taken:
                raise BoxValidationError(f'Skill with name "{name}" already exists')
            taken.add(name)

    def _publish_all(self, selected: list[Candidate]) -> list[Skill]:
        root = self.root
        published: list[Path] = []
        try:
            for candidate in selected:
                target = root / candidate.target_name
                self._publish(candidate.staged_root, target)
                published.append(target)
            return [self.loader.load(root / c.target_name, c.entry_file).skill for c in selected]
        except BaseException:
            with self._staging() as trash:
                for index, target in enumerate(published):
                    os.rename(target, trash / str(index))
            raise

    # ── staging ──────────────────────────────────────────────────────────

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A private directory in the root (same filesystem, so publishing is a rename),
        removed with whatever is left in it."""
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        self._active_staging.add(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            self._active_staging.discard(path)

    def _publish(self, staged: Path, target: Path) -> None:
        # rename() would silently replace an empty directory; check first, under the lock.
        if os.path.lexists(target):
            raise BoxValidationError(f"Skill directory already exists: {target}")
        os.rename(staged, target)

    def _write_entry(self, package_root: Path, metadata: dict[Any, Any], instructions: str) -> None:
        write_atomic(package_root / "SKILL.md", frontmatter.build(metadata, instructions).encode("utf-8"))

    def remove_stale_staging(self, max_age_sec: float = STALE_STAGING_SEC) -> int:
        """Remove staging directories an interrupted run left behind; returns how many."""
        root = self.configured_root
        if not root.is_dir():
            return 0
        active = set(self._active_staging)
        cutoff = time.time() - max_age_sec
        removed = 0
        with os.scandir(root) as entries:
            for entry in entries:
                if not entry.name.startswith(STAGING_PREFIX) or Path(entry.path) in active:
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) and info.st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed


def _resolve_field(value: str | None, imported: str | None) -> str:
    """LangBot's create rule: a field left out, or blank while importing, comes from the package."""
    if value is None or (imported is not None and not value.strip()):
        return imported or ""
    return value


def _merged_metadata(name: str, fields: SkillFields, existing: LoadedPackage | None) -> dict[Any, Any]:
    imported = existing.skill if existing else None
    return {
        **(existing.metadata if existing else {}),
        "name": name,
        "display_name": _resolve_field(fields.display_name, imported.display_name if imported else None),
        "description": _resolve_field(fields.description, imported.description if imported else None),
    }


def _merged_instructions(fields: SkillFields, existing: LoadedPackage | None) -> str:
    return _resolve_field(fields.instructions, existing.skill.instructions if existing else None)


def _copy_tree(source: Path, dest: Path, manifest: Manifest) -> None:
    """Copy exactly what the manifest lists (it was checked: regular files, within the caps)."""
    os.mkdir(dest, 0o755)
    for directory in manifest.directories:
        os.makedirs(dest / directory, mode=0o755, exist_ok=True)
    for entry in manifest.files:
        copy_regular_file(source / entry.path, dest / entry.path, entry.size, entry.mode)
