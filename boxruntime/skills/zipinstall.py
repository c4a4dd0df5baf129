"""From an uploaded zip to install candidates (LangBot 0.5's rules, reference §D.14 steps 2-6).

The archive is extracted (safely, see ``archive``) into a staging directory; a single top-level
directory becomes the root; ``source_subdir`` narrows it; skills found at most two levels down
are the candidates, each with its target directory ``<root>/<stem>[-<leaf>][-<suffix>]``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from boxruntime.errors import BoxValidationError
from boxruntime.models import SkillPreview
from boxruntime.skills.archive import ZipLimits, extract_zip
from boxruntime.skills.fileio import resolve_inside
from boxruntime.skills.names import target_dir_name
from boxruntime.skills.package import PackageLoader, discover

CANDIDATE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Candidate:
    staged_root: Path  # the package inside the staging directory
    entry_file: str
    source_path: str
    target_name: str
    declared_name: str | None  # the frontmatter name, if any
    preview: SkillPreview


def unpack(archive: Path, stage: Path, source_subdir: str, limits: ZipLimits) -> Path:
    """Extract into ``stage`` and return the directory to look for skills in."""
    extracted = stage / "extracted"
    extract_zip(archive, extracted, limits)
    children = os.listdir(extracted)
    base = extracted
    if len(children) == 1 and stat.S_ISDIR(os.lstat(extracted / children[0]).st_mode):
        base = extracted / children[0]
    subdir = str(source_subdir or "").strip().replace("\\", "/").strip("/")
    if not subdir:
        return base
    try:
        target, _ = resolve_inside(str(base), subdir)
    except BoxValidationError:
        raise BoxValidationError("source_subdir must stay within the uploaded archive") from None
    if not os.path.isdir(target):
        raise BoxValidationError(f"source_subdir does not exist in the uploaded archive: {subdir}")
    return Path(target)


def find_candidates(base: Path, loader: PackageLoader, skills_root: Path, stem: str, suffix: str) -> list[Candidate]:
    found = discover(base, CANDIDATE_DEPTH)
    if not found:
        raise BoxValidationError(
            f"No SKILL.md found in the uploaded archive or its subdirectories (max depth: {CANDIDATE_DEPTH})"
        )
    candidates = []
    for package_root, entry_file in found:
        relative = package_root.relative_to(base).as_posix()
        source_path = "" if relative == "." else relative
        target_name = target_dir_name(stem, source_path, suffix)
        loaded = loader.load(package_root, entry_file)
        declared = str(loaded.metadata.get("name") or "").strip() or None
        # The name install will give it: the declared one, else the target directory's.
        preview = SkillPreview(
            **loaded.skill.model_dump(exclude={"package_root", "name"}),
            name=declared or target_name,
            package_root=str(skills_root / target_name),
            source_path=source_path,
        )
        candidates.append(Candidate(package_root, entry_file, source_path, target_name, declared, preview))
    candidates.sort(key=lambda c: c.source_path)
    return candidates


def _normalised(path: str) -> str:
    return str(path or "").strip().replace("\\", "/").strip("/")


def select(candidates: list[Candidate], source_paths: list[str], source_path: str) -> list[Candidate]:
    """The candidates to install: the only one, or those ``source_paths`` (or the legacy
    ``source_path``) name."""
    wanted: list[str] = []
    for path in [*source_paths, source_path] if _normalised(source_path) else source_paths:
        normalised = _normalised(path)
        if normalised not in wanted:
            wanted.append(normalised)
    if len(candidates) == 1 and not wanted:
        return candidates
    available = ", ".join(c.source_path or "." for c in candidates)
    if not wanted:
        raise BoxValidationError(f"Multiple skills found. Please choose one or more source_paths: {available}")
    by_path = {c.source_path: c for c in candidates}
    selected = []
    for path in wanted:
        if path not in by_path:
            raise BoxValidationError(f'Invalid source_path "{path}". Available: {available}')
        selected.append(by_path[path])
    return selected
