"""SkillStore on real files: LangBot 0.5's semantics, atomic installs, digests, confinement."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from boxruntime.errors import BoxValidationError
from boxruntime.models import Skill, SkillFields, SkillUpdate
from boxruntime.skills import frontmatter
from boxruntime.skills.fileio import resolve_inside
from boxruntime.skills.manifest import build_manifest
from boxruntime.skills.package import STAGING_PREFIX
from boxruntime.skills.store import SkillStore
from tests.test_skill_archive import build_zip, skill_md, zip_with_duplicates

MiB = 1024 * 1024
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# The fields LangBot 0.5's store reports for a skill (_PUBLIC_SKILL_FIELDS).
LANGBOT_FIELDS = {
    "name",
    "display_name",
    "description",
    "instructions",
    "package_root",
    "entry_file",
    "created_at",
    "updated_at",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "skills"


@pytest.fixture
def store(root: Path) -> SkillStore:
    return SkillStore(root)


def entries(root: Path) -> list[str]:
    """What is in the skills root, staging directories included."""
    return sorted(os.listdir(root)) if root.exists() else []


def demo_files(name: str = "demo") -> dict[str, bytes | str]:
    return {
        f"{name}/SKILL.md": skill_md(name),
        f"{name}/scripts/run.sh": "#!/bin/sh\necho hi\n",
    }


EXEC = {"demo/scripts/run.sh": stat.S_IFREG | 0o755}


def install(
    store: SkillStore, tmp_path: Path, files: Mapping[str, bytes | str], filename: str = "demo.zip", **kw: Any
) -> list[Skill]:
    archive = build_zip(tmp_path / f"upload-{len(list(tmp_path.iterdir()))}.zip", files, modes=kw.pop("modes", None))
    return store.install_zip(archive, filename=filename, **kw)


# ── install and list ────────────────────────────────────────────────────


def test_install_reports_langbot_fields_and_ours(store: SkillStore, root: Path, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files(), filename="Demo Skill.zip", modes=EXEC)
    package = root.resolve() / "Demo-Skill-upload"
    assert skill.package_root == str(package)
    assert (skill.name, skill.display_name, skill.description) == ("demo", "demo", "A demo skill")
    assert skill.instructions == "# Demo\n\nRun it.\n"
    assert skill.entry_file == "SKILL.md"
    assert skill.frontmatter == {"license": "MIT"}
    assert DIGEST.match(skill.digest)
    assert skill.file_count == 2
    assert skill.total_bytes == len(skill_md().encode()) + len("#!/bin/sh\necho hi\n")
    assert os.stat(package / "scripts" / "run.sh").st_mode & 0o111
    assert store.list_skills() == [skill]
    assert store.get_skill("demo") == skill
    assert entries(root) == ["Demo-Skill-upload"], "no staging directory may remain"


def test_skill_json_has_langbot_keys_and_iso_times_with_utc_offset(store: SkillStore, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files())
    data = skill.model_dump(mode="json")
    assert set(data) >= LANGBOT_FIELDS
    for key in ("created_at", "updated_at"):
        assert data[key].endswith("+00:00")
        assert dt.datetime.fromisoformat(data[key]) == getattr(skill, key)


def test_list_is_newest_first_and_leaves_out_broken_packages(store: SkillStore, root: Path, tmp_path: Path) -> None:
    install(store, tmp_path, demo_files("old"), filename="old.zip")
    install(store, tmp_path, demo_files("new"), filename="new.zip")
    old_md = root / "old-upload" / "SKILL.md"
    os.utime(old_md, (time.time() - 3600, time.time() - 3600))
    broken = root / "broken"
    broken.mkdir()
    (broken / "SKILL.md").write_text("---\nname: [unclosed\n---\nbody\n")
    assert [s.name for s in store.list_skills()] == ["new", "old"]


def test_digest_is_stable_location_independent_and_tracks_content(
    store: SkillStore, root: Path, tmp_path: Path
) -> None:
    [skill] = install(store, tmp_path, demo_files(), modes=EXEC)
    package = Path(skill.package_root)
    assert store.require("demo").digest == skill.digest
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    assert build_manifest(copy).digest == skill.digest, "same content elsewhere, same digest"

    store.write_file("demo", "scripts/run.sh", "#!/bin/sh\necho changed\n")
    changed = store.require("demo").digest
    assert changed != skill.digest
    store.write_file("demo", "scripts/run.sh", "#!/bin/sh\necho hi\n")
    assert store.require("demo").digest == skill.digest, "same bytes again, same digest again"

    os.chmod(package / "scripts" / "run.sh", 0o644)
    assert store.require("demo").digest != skill.digest, "losing the exec bit is a different revision"


def test_preview_lists_candidates_and_installs_nothing(store: SkillStore, root: Path, tmp_path: Path) -> None:
    files = {
        "pack/alpha/SKILL.md": skill_md("alpha"),
        "pack/beta/SKILL.md": skill_md("beta"),
        "pack/README.md": "bundle",
    }
    archive = build_zip(tmp_path / "bundle.zip", files)
    previews = store.preview_zip(archive, filename="bundle.zip")
    assert [(p.source_path, p.name) for p in previews] == [("alpha", "alpha"), ("beta", "beta")]
    assert [p.package_root for p in previews] == [
        str(root.resolve() / "bundle-alpha-upload"),
        str(root.resolve() / "bundle-beta-upload"),
    ]
    assert entries(root) == []
    assert archive.exists(), "the store never deletes the archive; the upload layer does"


def test_several_candidates_need_a_selection(store: SkillStore, root: Path, tmp_path: Path) -> None:
    files = {"pack/alpha/SKILL.md": skill_md("alpha"), "pack/beta/SKILL.md": skill_md("beta")}
    with pytest.raises(BoxValidationError, match=r"Multiple skills found.*alpha, beta"):
        install(store, tmp_path, files, filename="bundle.zip")
    with pytest.raises(BoxValidationError, match='Invalid source_path "gamma"'):
        install(store, tmp_path, files, filename="bundle.zip", source_paths=["gamma"])
    assert entries(root) == []
    [beta] = install(store, tmp_path, files, filename="bundle.zip", source_paths=["/beta/"])
    assert beta.package_root.endswith("/bundle-beta-upload")
    [alpha] = install(store, tmp_path, files, filename="bundle.zip", source_path="alpha")
    assert alpha.name == "alpha"
    assert entries(root) == ["bundle-alpha-upload", "bundle-beta-upload"]


def test_source_subdir_narrows_and_cannot_escape(store: SkillStore, root: Path, tmp_path: Path) -> None:
    files = {"pack/alpha/SKILL.md": skill_md("alpha"), "pack/beta/SKILL.md": skill_md("beta")}
    for subdir in ("../..", "/../x", "alpha/../../.."):
        with pytest.raises(BoxValidationError, match="source_subdir must stay within"):
            install(store, tmp_path, files, filename="bundle.zip", source_subdir=subdir)
    with pytest.raises(BoxValidationError, match="does not exist"):
        install(store, tmp_path, files, filename="bundle.zip", source_subdir="gamma")
    [alpha] = install(store, tmp_path, files, filename="bundle.zip", source_subdir="/alpha")
    assert alpha.package_root == str(root.resolve() / "bundle-upload")


@pytest.mark.parametrize("suffix", ["../../evil", "a/b", ".hidden", "x" * 65])
def test_target_suffix_cannot_name_a_path(store: SkillStore, root: Path, tmp_path: Path, suffix: str) -> None:
    with pytest.raises(BoxValidationError, match="target_suffix"):
        install(store, tmp_path, demo_files(), target_suffix=suffix)
    assert entries(root) == []
    assert not (tmp_path / "evil").exists()


def test_empty_suffix_and_odd_filenames_follow_langbot_naming(store: SkillStore, root: Path, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files(), filename="../../My Skill (v2).zip", target_suffix="")
    assert Path(skill.package_root).name == "My-Skill--v2"
    [other] = install(store, tmp_path, demo_files("other"), filename="!!!.zip")
    assert Path(other.package_root).name == "uploaded-skill-upload"


def test_existing_target_or_name_is_refused(store: SkillStore, root: Path, tmp_path: Path) -> None:
    install(store, tmp_path, demo_files())
    with pytest.raises(BoxValidationError, match="Skill directory already exists"):
        install(store, tmp_path, demo_files())
    with pytest.raises(BoxValidationError, match='Skill with name "demo" already exists'):
        install(store, tmp_path, demo_files(), filename="another.zip")
    assert entries(root) == ["demo-upload"]


def _bomb(tmp_path: Path) -> Path:
    return build_zip(tmp_path / "m.zip", {"demo/SKILL.md": skill_md(), "demo/zeros": bytes(10 * MiB)})


MALICIOUS: dict[str, Callable[[Path], Path]] = {
    "zip-slip": lambda p: build_zip(p / "m.zip", {"demo/SKILL.md": skill_md(), "demo/../../escape": "x"}),
    "absolute": lambda p: build_zip(p / "m.zip", {"demo/SKILL.md": skill_md(), "/etc/x": "x"}),
    "symlink": lambda p: build_zip(
        p / "m.zip",
        {"demo/SKILL.md": skill_md(), "demo/passwd": "/etc/passwd"},
        modes={"demo/passwd": stat.S_IFLNK | 0o777},
    ),
    "device": lambda p: build_zip(
        p / "m.zip", {"demo/SKILL.md": skill_md(), "demo/tty": b""}, modes={"demo/tty": stat.S_IFCHR | 0o600}
    ),
    "ratio-bomb": _bomb,
    "too-many-entries": lambda p: build_zip(
        p / "m.zip", {"demo/SKILL.md": skill_md(), **{f"demo/f{i}": "x" for i in range(3000)}}
    ),
    "duplicates": lambda p: zip_with_duplicates(p / "m.zip", "demo/SKILL.md", skill_md().encode(), b"evil"),
    "bad-frontmatter": lambda p: build_zip(p / "m.zip", {"demo/SKILL.md": "---\nname: [unclosed\n---\nbody\n"}),
    "bad-name": lambda p: build_zip(p / "m.zip", {"demo/SKILL.md": skill_md("bad name!")}),
    "no-skill": lambda p: build_zip(p / "m.zip", {"demo/README.md": "no skill here"}),
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_refused_install_leaves_nothing_behind(store: SkillStore, root: Path, tmp_path: Path, kind: str) -> None:
    archive = MALICIOUS[kind](tmp_path)
    with pytest.raises(BoxValidationError):
        store.install_zip(archive, filename="demo.zip")
    if kind == "bad-name":
        # Preview shows what is in the archive (as LangBot's does); only installing checks names.
        assert [p.name for p in store.preview_zip(archive, filename="demo.zip")] == ["bad name!"]
    else:
        with pytest.raises(BoxValidationError):
            store.preview_zip(archive, filename="demo.zip")
    assert entries(root) == [], f"{kind}: the skills root must be exactly as before"
    assert not (tmp_path / "escape").exists()


def test_failure_while_publishing_rolls_back_what_was_published(
    store: SkillStore, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"pack/alpha/SKILL.md": skill_md("alpha"), "pack/beta/SKILL.md": skill_md("beta")}
    publish = store._publish
    calls: list[Path] = []

    def publish_then_fail(staged: Path, target: Path) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError("disk full")
        publish(staged, target)

    monkeypatch.setattr(store, "_publish", publish_then_fail)
    with pytest.raises(OSError, match="disk full"):
        install(store, tmp_path, files, filename="bundle.zip", source_paths=["alpha", "beta"])
    assert len(calls) == 2, "the first skill was published before the failure"
    assert entries(root) == [], "and rolled back with it"


def test_unterminated_or_non_mapping_frontmatter_is_no_frontmatter(store: SkillStore, tmp_path: Path) -> None:
    text = "---\nname: never-closed\n\n# Body\n"
    [skill] = install(store, tmp_path, {"pkg/SKILL.md": text}, filename="loose.zip")
    assert (skill.name, skill.instructions, skill.frontmatter) == ("loose-upload", text, {})
    [listed] = install(store, tmp_path, {"pkg/SKILL.md": "---\n- a\n- b\n---\nBody\n"}, filename="list.zip")
    assert (listed.name, listed.instructions, listed.frontmatter) == ("list-upload", "Body\n", {})


def test_yaml_alias_bomb_in_frontmatter_is_refused(store: SkillStore, root: Path, tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(9)
    ]
    text = "---\nname: bomb\n" + "\n".join(lines) + "\n---\nbody\n"
    with pytest.raises(BoxValidationError, match="more than 10000 values"):
        install(store, tmp_path, {"pkg/SKILL.md": text})
    assert entries(root) == []


# ── create / update / delete ────────────────────────────────────────────


def test_create_empty_writes_langbot_skill_md(store: SkillStore, root: Path) -> None:
    skill = store.create(SkillFields(name="notes", description="Take notes"))
    package = root.resolve() / "notes"
    assert skill.package_root == str(package)
    assert (package / "SKILL.md").read_text() == "---\nname: notes\ndescription: Take notes\n---\n\n"
    assert (skill.display_name, skill.instructions, skill.file_count) == ("notes", "", 1)
    assert entries(root) == ["notes"]


@pytest.mark.parametrize("name", ["", "   ", "has space", "../x", "a/b", "x" * 65, "dot.name"])
def test_create_refuses_bad_names(store: SkillStore, root: Path, name: str) -> None:
    with pytest.raises(BoxValidationError, match="Skill name"):
        store.create(SkillFields(name=name))
    assert entries(root) == []


def test_unicode_letters_count_as_alphanumeric_like_langbot(store: SkillStore) -> None:
    assert store.create(SkillFields(name="技能_1")).name == "技能_1"


def test_create_refuses_existing_name_and_directory(store: SkillStore, root: Path) -> None:
    store.create(SkillFields(name="notes"))
    with pytest.raises(BoxValidationError, match='"notes" already exists'):
        store.create(SkillFields(name="notes"))
    (root / "stray").mkdir()
    with pytest.raises(BoxValidationError, match="pass it as package_root to adopt it"):
        store.create(SkillFields(name="stray"))
    assert list((root / "stray").iterdir()) == [], "an existing directory is never written into uninvited"


def _package(path: Path, text: str, **files: str) -> Path:
    path.mkdir(parents=True)
    (path / "SKILL.md").write_text(text)
    for name, content in files.items():
        (path / name).write_text(content)
    return path


def test_create_imports_a_package_from_elsewhere_by_copy(store: SkillStore, root: Path, tmp_path: Path) -> None:
    source = _package(tmp_path / "src", skill_md("original", "From the package"), **{"tool.py": "print(1)\n"})
    skill = store.create(SkillFields(name="imported", package_root=str(source), display_name=""))
    package = root.resolve() / "imported"
    assert skill.package_root == str(package)
    assert (package / "tool.py").read_text() == "print(1)\n"
    # Left out or blank: taken from the package. The name is the one asked for.
    assert (skill.name, skill.description, skill.display_name) == ("imported", "From the package", "original")
    assert skill.instructions == "# Demo\n\nRun it.\n"
    assert skill.frontmatter == {"license": "MIT"}, "unknown frontmatter keys survive the rewrite"
    assert (source / "SKILL.md").read_text() == skill_md("original", "From the package"), "source untouched"


def test_import_refuses_links_and_leaves_nothing(store: SkillStore, root: Path, tmp_path: Path) -> None:
    source = _package(tmp_path / "src", skill_md("original"))
    os.symlink("/etc/passwd", source / "passwd")
    with pytest.raises(BoxValidationError, match="symlink"):
        store.create(SkillFields(name="imported", package_root=str(source)))
    assert entries(root) == []


def test_import_refuses_denied_paths_and_the_root_s_ancestors(store: SkillStore, root: Path, tmp_path: Path) -> None:
    with pytest.raises(BoxValidationError, match="blocked for security"):
        store.create(SkillFields(name="etc", package_root="/etc"))
    (tmp_path / "SKILL.md").write_text(skill_md("top"))
    with pytest.raises(BoxValidationError, match="contains the skills root"):
        store.create(SkillFields(name="loop", package_root=str(tmp_path)))
    assert entries(root) == []


def test_create_adopts_a_package_already_under_the_root(store: SkillStore, root: Path) -> None:
    package = _package(root / "manual", skill_md("manual-old", "Hand made"))
    skill = store.create(SkillFields(name="manual", package_root=str(package)))
    assert skill.package_root == str(package.resolve())
    assert (skill.name, skill.description) == ("manual", "Hand made")
    assert frontmatter.parse((package / "SKILL.md").read_text())[0]["name"] == "manual"
    assert entries(root) == ["manual"]


def test_update_rewrites_fields_and_keeps_unknown_keys(store: SkillStore, tmp_path: Path) -> None:
    install(store, tmp_path, demo_files())
    updated = store.update("demo", SkillUpdate(description="Better", instructions="New body\n"))
    assert (updated.description, updated.instructions) == ("Better", "New body\n")
    assert updated.frontmatter == {"license": "MIT"}
    text = (Path(updated.package_root) / "SKILL.md").read_text()
    assert yaml.safe_load(frontmatter.split(text)[0] or "") == {
        "name": "demo",
        "display_name": "demo",
        "description": "Better",
        "license": "MIT",
    }
    cleared = store.update("demo", SkillUpdate.model_validate({"display_name": None, "instructions": None}))
    assert (cleared.display_name, cleared.instructions) == ("demo", "")


def test_update_refuses_rename_and_package_root_change(store: SkillStore, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files())
    with pytest.raises(BoxValidationError, match="Renaming"):
        store.update("demo", SkillUpdate(name="other"))
    with pytest.raises(BoxValidationError, match="package_root"):
        store.update("demo", SkillUpdate(package_root=str(tmp_path)))
    assert store.update("demo", SkillUpdate(package_root=skill.package_root, name="demo")).name == "demo"
    with pytest.raises(BoxValidationError, match="not found"):
        store.update("missing", SkillUpdate())


def test_delete_removes_the_package_and_spares_siblings(store: SkillStore, root: Path) -> None:
    _package(root / "group" / "a", skill_md("a"))
    _package(root / "group" / "b", skill_md("b"))
    store.create(SkillFields(name="solo"))
    assert store.delete("a") == "a"
    assert store.get_skill("a") is None
    assert (root / "group" / "b" / "SKILL.md").exists(), "a sibling sharing the top-level directory survives"
    store.delete("b")
    store.delete("solo")
    assert entries(root) == []
    with pytest.raises(BoxValidationError, match="not found"):
        store.delete("solo")


def test_delete_refuses_a_skill_at_the_root_itself(store: SkillStore, root: Path) -> None:
    root.mkdir()
    (root / "SKILL.md").write_text(skill_md("rooted"))
    with pytest.raises(BoxValidationError, match="Only managed skills"):
        store.delete("rooted")
    assert (root / "SKILL.md").exists()


# ── files inside a package ──────────────────────────────────────────────


def test_read_write_and_list_files(store: SkillStore, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, {**demo_files(), "demo/.secret": "hidden"}, modes=EXEC)
    package = Path(skill.package_root)
    read = store.read_file("demo", "./SKILL.md")
    assert (read.path, read.content, read.skill.name) == ("SKILL.md", skill_md(), "demo")

    written = store.write_file("demo", "docs/deep/note.md", "héllo")
    assert (written.path, written.bytes_written) == ("docs/deep/note.md", len("héllo".encode()))
    assert (package / "docs" / "deep" / "note.md").read_text() == "héllo"
    store.write_file("demo", "scripts/run.sh", "#!/bin/sh\necho new\n")
    assert os.stat(package / "scripts" / "run.sh").st_mode & 0o111, "rewriting a script keeps it executable"

    listing = store.list_files("demo")
    assert listing.base_path == "."
    assert [(e.path, e.is_dir) for e in listing.entries] == [("SKILL.md", False), ("docs", True), ("scripts", True)]
    assert listing.entries[1].size is None
    assert listing.entries[0].size == len(skill_md())
    assert not listing.truncated
    hidden = store.list_files("demo", include_hidden=True)
    assert ".secret" in [e.name for e in hidden.entries]
    sub = store.list_files("demo", "docs/deep")
    assert (sub.base_path, [e.path for e in sub.entries]) == ("docs/deep", ["docs/deep/note.md"])
    # LangBot's quirk: reaching max_entries counts as truncated.
    exact = store.list_files("demo", max_entries=3)
    assert (len(exact.entries), exact.truncated) == (3, True)


@pytest.mark.parametrize("path", ["../x", "../../etc/passwd", "/etc/passwd", "scripts/../../x", "a/../../../x"])
def test_paths_escaping_the_package_are_refused(store: SkillStore, root: Path, tmp_path: Path, path: str) -> None:
    install(store, tmp_path, demo_files())
    for call in (
        lambda: store.read_file("demo", path),
        lambda: store.list_files("demo", path),
        lambda: store.write_file("demo", path, "pwned"),
    ):
        with pytest.raises(BoxValidationError, match="path must"):
            call()
    assert entries(root) == ["demo-upload"]
    assert not (tmp_path / "x").exists() and not (root / "x").exists()


def test_resolve_inside_refuses_a_symlink_pointing_out(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, package / "out")
    os.symlink("/etc/passwd", package / "passwd")
    os.symlink(package / "sub", package / "inner")
    real = os.path.realpath(package)
    for path in ("out", "out/new.txt", "passwd"):
        with pytest.raises(BoxValidationError, match="stay within"):
            resolve_inside(real, path)
    assert resolve_inside(real, "inner/x") == (os.path.join(real, "sub", "x"), "inner/x")


def test_a_package_with_a_link_out_is_not_a_skill(store: SkillStore, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files())
    package = Path(skill.package_root)
    os.symlink("/etc", package / "etc")
    assert store.list_skills() == [], "a package holding a symlink is left out"
    with pytest.raises(BoxValidationError, match="not found"):
        store.read_file("demo", "etc/passwd")
    os.unlink(package / "etc")
    (package / "SKILL.md").unlink()
    os.symlink("/etc/passwd", package / "SKILL.md")
    assert store.list_skills() == [], "a SKILL.md that is a symlink does not make a skill"


def test_write_guards(store: SkillStore, tmp_path: Path) -> None:
    [skill] = install(store, tmp_path, demo_files())
    with pytest.raises(BoxValidationError, match="not valid YAML"):
        store.write_file("demo", "SKILL.md", "---\nname: [broken\n---\n")
    assert (Path(skill.package_root) / "SKILL.md").read_text() == skill_md(), "SKILL.md untouched"
    with pytest.raises(BoxValidationError, match="larger than"):
        store.write_file("demo", "big.txt", "x" * (MiB + 1))
    with pytest.raises(BoxValidationError, match="not a directory"):
        store.write_file("demo", "scripts", "x")
    with pytest.raises(BoxValidationError, match="not a directory"):
        store.write_file("demo", ".", "x")


def test_reads_are_utf8_text_only(store: SkillStore, tmp_path: Path) -> None:
    install(store, tmp_path, {**demo_files(), "demo/blob.bin": b"\xff\xfe\x00binary"})
    with pytest.raises(BoxValidationError, match="not valid UTF-8"):
        store.read_file("demo", "blob.bin")
    with pytest.raises(BoxValidationError, match="Skill file not found"):
        store.read_file("demo", "missing.txt")
    with pytest.raises(BoxValidationError, match="Skill file not found"):
        store.read_file("demo", "scripts")


# ── scan and housekeeping ───────────────────────────────────────────────


def test_scan_finds_exactly_one_skill_two_levels_down(store: SkillStore, tmp_path: Path) -> None:
    _package(tmp_path / "repo" / "skills" / "tool", skill_md("tool"))
    skill = store.scan(str(tmp_path / "repo"))
    assert (skill.name, skill.package_root) == ("tool", str((tmp_path / "repo" / "skills" / "tool").resolve()))
    _package(tmp_path / "repo" / "other", skill_md("other"))
    with pytest.raises(BoxValidationError, match="Multiple skill directories"):
        store.scan(str(tmp_path / "repo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxValidationError, match=r"No SKILL\.md found"):
        store.scan(str(tmp_path / "empty"))
    with pytest.raises(BoxValidationError, match="blocked for security"):
        store.scan("/etc")
    with pytest.raises(BoxValidationError, match="does not exist"):
        store.scan(str(tmp_path / "missing"))


def test_stale_staging_is_removed_and_nothing_else(store: SkillStore, root: Path) -> None:
    root.mkdir()
    old = root / f"{STAGING_PREFIX}old"
    (old / "extracted").mkdir(parents=True)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = root / f"{STAGING_PREFIX}fresh"
    fresh.mkdir()
    keep = root / "keep"
    keep.mkdir()
    os.utime(keep, (time.time() - 7200, time.time() - 7200))
    assert store.remove_stale_staging() == 1
    assert entries(root) == sorted([fresh.name, "keep"])
    assert store.list_skills() == [], "staging directories are never listed as skills"


def test_a_callable_root_follows_settings_changes(tmp_path: Path) -> None:
    current = {"root": tmp_path / "first"}
    store = SkillStore(lambda: current["root"])
    store.create(SkillFields(name="one"))
    current["root"] = tmp_path / "second"
    assert store.list_skills() == [], "box_init moved the root: the old skills are not in the new one"
    store.create(SkillFields(name="two"))
    assert entries(tmp_path / "first") == ["one"] and entries(tmp_path / "second") == ["two"]
