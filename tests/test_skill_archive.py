"""Safe zip extraction on real zip files built here: good archives, and every way an upload
tries to escape, lie or explode (zip-slip, links, devices, bombs, crafted directories)."""

from __future__ import annotations

import os
import stat
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.skills.archive import ZipLimits, check_end_record, extract_members, extract_zip, inspect_members

MiB = 1024 * 1024


# ── zip builders (also used by the store, upload and LangBot tests) ──────


def build_zip(
    path: Path,
    files: Mapping[str, bytes | str],
    *,
    modes: Mapping[str, int] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """A real zip: ``files`` in order; ``modes`` sets a member's Unix mode (type bits included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we build on purpose
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, content in files.items():
                zf.writestr(_info(name, (modes or {}).get(name), compression), content)
    return path


def _info(name: str, mode: int | None, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = compression
    if mode is not None:
        info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
        info.external_attr = mode << 16
    return info


def skill_md(name: str | None = "demo", description: str = "A demo skill", body: str = "# Demo\n\nRun it.\n") -> str:
    header = "" if name is None else f"name: {name}\n"
    return f"---\n{header}description: {description}\nlicense: MIT\n---\n\n{body}"


def zip_with_duplicates(path: Path, name: str, first: bytes, second: bytes) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(name, first)
            zf.writestr(name, second)
    return path


def patch_central_record(path: Path, member: str, *, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of ``member``'s central-directory record (offset from its signature)."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, _central_record(data, member) + offset, value)
    path.write_bytes(bytes(data))


def _central_record(data: bytearray, member: str) -> int:
    encoded = member.encode()
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == encoded:
            return pos
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"{member} not in central directory")


# Offsets in a central-directory record.
CD_FLAGS, CD_CRC, CD_USIZE, CD_OFFSET = 8, 16, 24, 42


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out"


def refused(archive: Path, dest: Path, match: str, limits: ZipLimits | None = None) -> None:
    with pytest.raises(BoxValidationError, match=match):
        extract_zip(archive, dest, limits)


def written_files(dest: Path) -> list[str]:
    if not dest.exists():
        return []
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())


# ── good archives ───────────────────────────────────────────────────────


def test_good_archive_extracts_files_directories_and_exec_bits(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(
        tmp_path / "skill.zip",
        {
            "demo/": b"",
            "demo/SKILL.md": skill_md(),
            "demo/scripts/run.sh": "#!/bin/sh\necho hi\n",
            "demo/data/empty/": b"",
            "demo/setuid": b"x",
        },
        modes={"demo/scripts/run.sh": stat.S_IFREG | 0o755, "demo/setuid": stat.S_IFREG | 0o4755},
    )
    members = extract_zip(archive, dest)
    assert len(members) == 5
    assert (dest / "demo" / "SKILL.md").read_text() == skill_md()
    assert (dest / "demo" / "data" / "empty").is_dir()
    run_mode = stat.S_IMODE(os.stat(dest / "demo" / "scripts" / "run.sh").st_mode)
    assert run_mode & 0o111, "an executable script must stay executable"
    setuid_mode = os.stat(dest / "demo" / "setuid").st_mode
    assert not setuid_mode & (stat.S_ISUID | stat.S_ISGID), "set-id bits must never survive extraction"
    assert stat.S_IMODE(os.stat(dest / "demo" / "SKILL.md").st_mode) & 0o111 == 0


def test_stored_and_deflated_members_round_trip_exactly(tmp_path: Path, dest: Path) -> None:
    payload = os.urandom(200_000)
    archive = build_zip(tmp_path / "a.zip", {"blob.bin": payload}, compression=zipfile.ZIP_STORED)
    extract_zip(archive, dest)
    assert (dest / "blob.bin").read_bytes() == payload


def test_default_limits_are_the_documented_caps() -> None:
    limits = ZipLimits()
    assert (limits.max_archive_bytes, limits.max_entries, limits.max_entry_bytes) == (20 * MiB, 512, 16 * MiB)
    assert (limits.max_total_bytes, limits.max_ratio) == (64 * MiB, 100)


def test_small_highly_compressible_files_are_not_mistaken_for_bombs(tmp_path: Path, dest: Path) -> None:
    # 40 KiB of spaces compresses far beyond 100:1, but is below the ratio floor.
    archive = build_zip(tmp_path / "a.zip", {"SKILL.md": skill_md(), "blank.txt": " " * 40_000})
    extract_zip(archive, dest)
    assert (dest / "blank.txt").stat().st_size == 40_000


# ── not a zip ───────────────────────────────────────────────────────────


def test_empty_upload_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "empty.zip"
    archive.write_bytes(b"")
    refused(archive, dest, "empty")


def test_garbage_is_refused_as_not_a_zip(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "junk.zip"
    archive.write_bytes(b"this is not a zip file at all" * 10)
    refused(archive, dest, "valid .zip archive")
    assert not dest.exists()


# ── escapes ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "name",
    ["../x", "../../etc/cron.d/evil", "/etc/x", "a/../../x", "a/./b", "a//b", "C:/windows/x", "..\\..\\x", "./x"],
)
def test_unsafe_member_paths_are_refused_before_anything_is_written(tmp_path: Path, dest: Path, name: str) -> None:
    archive = build_zip(tmp_path / "slip.zip", {"SKILL.md": skill_md(), name: b"pwned"})
    refused(archive, dest, "unsafe path")
    assert not dest.exists(), "nothing may be written when any member is unsafe"
    assert not (tmp_path / "x").exists()


def test_symlink_member_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(
        tmp_path / "link.zip",
        {"SKILL.md": skill_md(), "passwd": "/etc/passwd"},
        modes={"passwd": stat.S_IFLNK | 0o777},
    )
    refused(archive, dest, "symlink")
    assert not dest.exists()


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (stat.S_IFCHR, "character device"),
        (stat.S_IFBLK, "block device"),
        (stat.S_IFIFO, "FIFO"),
        (stat.S_IFSOCK, "socket"),
    ],
)
def test_special_file_members_are_refused(tmp_path: Path, dest: Path, kind: int, word: str) -> None:
    archive = build_zip(tmp_path / "dev.zip", {"SKILL.md": skill_md(), "node": b""}, modes={"node": kind | 0o600})
    refused(archive, dest, word)


def test_encrypted_member_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "enc.zip", {"secret.txt": b"data"})
    patch_central_record(archive, "secret.txt", offset=CD_FLAGS, fmt="<H", value=0x1)
    refused(archive, dest, "encrypted")


# ── duplicates and layout ───────────────────────────────────────────────


def test_duplicate_names_are_refused(tmp_path: Path, dest: Path) -> None:
    archive = zip_with_duplicates(tmp_path / "dup.zip", "SKILL.md", b"first", b"second")
    refused(archive, dest, "duplicate entry")
    assert not dest.exists()


def test_path_that_is_both_file_and_directory_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "clash.zip", {"a": b"file", "a/b": b"nested"})
    refused(archive, dest, "both a file and a directory")


# ── sizes and bombs ─────────────────────────────────────────────────────


def test_ratio_bomb_under_the_size_caps_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "bomb.zip", {"SKILL.md": skill_md(), "zeros.bin": bytes(10 * MiB)})
    assert archive.stat().st_size < 100_000
    refused(archive, dest, "compresses more than 100:1")
    assert not dest.exists()


def test_fifty_megabytes_of_zeros_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(50 * MiB)})
    refused(archive, dest, "limit is 16 MiB")
    assert not dest.exists()


def test_entry_over_16_mib_is_refused_even_when_incompressible(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "big.zip", {"big.bin": os.urandom(16 * MiB + 1)}, compression=zipfile.ZIP_STORED)
    refused(archive, dest, "limit is 16 MiB")


def test_total_over_64_mib_is_refused(tmp_path: Path, dest: Path) -> None:
    files = {f"part{i}.bin": bytes(14 * MiB) for i in range(5)}
    archive = build_zip(tmp_path / "total.zip", files)
    # Lift the ratio cap so the total is what trips.
    refused(archive, dest, "expands to 73400320 bytes; the limit is 64 MiB", ZipLimits(max_ratio=10**6))


def test_archive_over_20_mib_is_refused_before_it_is_opened(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "huge.zip"
    with archive.open("wb") as handle:
        handle.truncate(20 * MiB + 1)
    refused(archive, dest, "limit is 20 MiB")


def test_more_than_512_entries_is_refused_from_the_end_record(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(3000)})
    with archive.open("rb") as handle, pytest.raises(BoxValidationError, match="3000 entries; the limit is 512"):
        check_end_record(handle, archive.stat().st_size, ZipLimits())
    refused(archive, dest, "3000 entries")


def test_end_record_understating_the_entry_count_is_caught_by_the_directory(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(600)})
    data = bytearray(archive.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 1, 1)  # "1 entry"
    archive.write_bytes(bytes(data))
    refused(archive, dest, "600 entries; the limit is 512")


def test_central_directory_understating_a_size_cannot_sneak_data_out(tmp_path: Path, dest: Path) -> None:
    """The header says 100 KiB (ratio 10:1, within every cap); the data is 10 MiB of zeros."""
    archive = build_zip(tmp_path / "liar.zip", {"SKILL.md": skill_md(), "zeros.bin": bytes(10 * MiB)})
    patch_central_record(archive, "zeros.bin", offset=CD_USIZE, fmt="<L", value=100 * 1024)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("zeros.bin").file_size == 100 * 1024  # the lie is what zipfile believes
    refused(archive, dest, "corrupt")
    out = dest / "zeros.bin"
    assert not out.exists() or out.stat().st_size <= 100 * 1024


def test_streaming_budget_holds_even_when_the_headers_passed(tmp_path: Path, dest: Path) -> None:
    """Pass 3 counts real bytes: with headers accepted under one limit, extraction under a
    tighter one stops at the cap instead of trusting what pass 2 saw."""
    archive = build_zip(tmp_path / "a.zip", {"one.bin": os.urandom(3000), "two.bin": os.urandom(3000)})
    with zipfile.ZipFile(archive) as zf:
        members = inspect_members(zf.infolist(), archive.stat().st_size, ZipLimits())
        tight = ZipLimits(max_total_bytes=4000)
        with pytest.raises(BoxValidationError, match="expands beyond"):
            extract_members(zf, members, dest, tight)
    assert (dest / "one.bin").stat().st_size == 3000
    assert (dest / "two.bin").stat().st_size < 3000


def test_entries_sharing_compressed_data_are_refused(tmp_path: Path, dest: Path) -> None:
    """The non-recursive zip bomb: several directory entries pointing at the same data."""
    archive = build_zip(tmp_path / "overlap.zip", {"a.txt": b"A" * 1000, "b.txt": b"B" * 1000})
    patch_central_record(archive, "b.txt", offset=CD_OFFSET, fmt="<L", value=0)
    refused(archive, dest, "overlaps")
    assert not dest.exists()


def test_corrupt_member_data_is_reported_not_crashed_on(tmp_path: Path, dest: Path) -> None:
    archive = build_zip(tmp_path / "crc.zip", {"SKILL.md": skill_md()})
    patch_central_record(archive, "SKILL.md", offset=CD_CRC, fmt="<L", value=0xDEADBEEF)
    refused(archive, dest, "corrupt")
