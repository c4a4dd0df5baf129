"""The POSIX ACL xattr encoder, checked against the kernel: what we write it must accept and
enforce, and what it writes we must read."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxruntime.backends.common import posix_acl
from boxruntime.backends.common.posix_acl import UNDEFINED_ID, AclFormatError, Entry, Tag

perms = st.integers(min_value=0, max_value=7)
ids = st.integers(min_value=1, max_value=60000)


@st.composite
def acls(draw: st.DrawFn) -> posix_acl.Acl:
    """Any ACL the kernel stores: the three base entries, named users and groups, and a mask
    when there is a named entry (always allowed)."""
    users = draw(st.dictionaries(ids, perms, max_size=4))
    groups = draw(st.dictionaries(ids, perms, max_size=4))
    entries = [
        Entry(Tag.USER_OBJ, UNDEFINED_ID, draw(perms)),
        Entry(Tag.GROUP_OBJ, UNDEFINED_ID, draw(perms)),
        Entry(Tag.OTHER, UNDEFINED_ID, draw(perms)),
        *(Entry(Tag.USER, uid, p) for uid, p in users.items()),
        *(Entry(Tag.GROUP, gid, p) for gid, p in groups.items()),
    ]
    if users or groups or draw(st.booleans()):
        entries.append(Entry(Tag.MASK, UNDEFINED_ID, draw(perms)))
    return tuple(sorted(entries, key=lambda e: (e.tag, e.qualifier)))


@given(acls())
def test_encoding_round_trips(acl: posix_acl.Acl) -> None:
    assert posix_acl.decode(posix_acl.encode(acl)) == acl


@given(acls(), ids, perms)
def test_with_user_grants_exactly_that_and_changes_nobody_else(acl: posix_acl.Acl, uid: int, perm: int) -> None:
    before = posix_acl.effective(acl)
    after = posix_acl.effective(posix_acl.with_user(acl, uid, perm))
    assert posix_acl.user_access(posix_acl.with_user(acl, uid, perm), uid) == perm
    assert after.pop((Tag.USER, uid)) == perm
    before.pop((Tag.USER, uid), None)
    assert after == before


@settings(max_examples=60, deadline=None)
@given(acl=acls(), uid=ids, perm=perms)
def test_the_kernel_stores_what_we_encode(
    tmp_path_factory: pytest.TempPathFactory, acl: posix_acl.Acl, uid: int, perm: int
) -> None:
    path = tmp_path_factory.mktemp("acl") / "f"
    path.touch()
    for value in (acl, posix_acl.with_user(acl, uid, perm)):
        os.setxattr(path, posix_acl.ACCESS, posix_acl.encode(value))
        mode = path.stat().st_mode
        # The kernel keeps an ACL of only the three base entries as mode bits, nothing else.
        stored = posix_acl.decode(os.getxattr(path, posix_acl.ACCESS)) if len(value) > 3 else posix_acl.from_mode(mode)
        assert posix_acl.effective(stored) == posix_acl.effective(value)
        assert (mode >> 6) & 7 == posix_acl.effective(value)[(Tag.USER_OBJ, UNDEFINED_ID)]
        assert mode & 7 == posix_acl.effective(value)[(Tag.OTHER, UNDEFINED_ID)]


def test_a_narrow_creation_mode_masks_an_inherited_entry(tmp_path: Path) -> None:
    """Why a default ACL alone is not enough for LangBot: mkdir(0700) under a default ACL that
    names uid 1000 inherits the entry, and the creation mode takes it away through the mask."""
    default = posix_acl.with_user(posix_acl.from_mode(0o755), 1000, 7)
    os.setxattr(tmp_path, posix_acl.DEFAULT, posix_acl.encode(default))
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "private").mkdir(mode=0o700)
    opened = posix_acl.decode(os.getxattr(tmp_path / "open", posix_acl.ACCESS))
    private = posix_acl.decode(os.getxattr(tmp_path / "private", posix_acl.ACCESS))
    assert posix_acl.user_access(opened, 1000) == 7
    assert posix_acl.user_access(private, 1000) == 0
    assert posix_acl.decode(os.getxattr(tmp_path / "private", posix_acl.DEFAULT)) == default


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"", "4 \\+ 8n bytes"),
        (struct.pack("<I", 2) + b"\x01\x00\x07\x00", "4 \\+ 8n bytes"),
        (struct.pack("<IHHI", 1, 1, 7, UNDEFINED_ID), "version 1"),
        (struct.pack("<IHHI", 2, 0x40, 7, 0), "unknown ACL tag"),
        (struct.pack("<IHHI", 2, 1, 8, UNDEFINED_ID), "beyond rwx"),
        (struct.pack("<IHHI", 2, 1, 7, UNDEFINED_ID), "exactly one GROUP_OBJ"),
    ],
)
def test_malformed_values_are_refused(value: bytes, problem: str) -> None:
    with pytest.raises(AclFormatError, match=problem):
        posix_acl.decode(value)
