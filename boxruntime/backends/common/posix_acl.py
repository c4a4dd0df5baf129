"""POSIX ACLs in the form Linux stores them: the ``system.posix_acl_access`` and
``system.posix_acl_default`` extended attributes. Pure: bytes and mode bits in, bytes out.

The format is a fixed kernel ABI (``include/uapi/linux/posix_acl_xattr.h``): a little-endian
u32 version (2), then 8-byte entries ``u16 tag, u16 perm, u32 id``. The id is a uid or gid for
named entries and ``0xFFFFFFFF`` otherwise. The kernel accepts entries only in tag order (owner,
named users, owning group, named groups, mask, other), and needs a mask once there is a named
entry. The stdlib has no ACL API, and ``setfacl`` would mean one program run per directory by
path; these few lines let the daemon set an ACL through a file descriptor it opened without
following links (see workspace_acl).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import IntEnum

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF
RWX = 0o7
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class Tag(IntEnum):
    USER_OBJ = 0x01
    USER = 0x02
    GROUP_OBJ = 0x04
    GROUP = 0x08
    MASK = 0x10
    OTHER = 0x20


_NAMED = (Tag.USER, Tag.GROUP)
_GROUP_CLASS = (Tag.USER, Tag.GROUP_OBJ, Tag.GROUP)  # the entries the mask limits


class AclFormatError(ValueError):
    """Bytes that are not a POSIX ACL the kernel would store."""


@dataclass(frozen=True, order=True, slots=True)
class Entry:
    tag: Tag
    qualifier: int  # uid or gid of a named entry; UNDEFINED_ID for the others
    perm: int  # rwx bits, 0..7


Acl = tuple[Entry, ...]


def encode(acl: Acl) -> bytes:
    """The xattr value for ``acl``, its entries put in the order the kernel requires."""
    entries = sorted(acl, key=lambda e: (e.tag, e.qualifier))
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.qualifier) for e in entries)


def decode(value: bytes) -> Acl:
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise AclFormatError(f"an ACL xattr is 4 + 8n bytes long, not {len(value)}")
    (version,) = _HEADER.unpack_from(value)
    if version != VERSION:
        raise AclFormatError(f"ACL xattr version {version}, expected {VERSION}")
    entries = []
    for offset in range(_HEADER.size, len(value), _ENTRY.size):
        tag, perm, qualifier = _ENTRY.unpack_from(value, offset)
        try:
            kind = Tag(tag)
        except ValueError:
            raise AclFormatError(f"unknown ACL tag {tag:#x}") from None
        if perm > RWX:
            raise AclFormatError(f"ACL permission {perm:#o} has bits beyond rwx")
        entries.append(Entry(kind, qualifier if kind in _NAMED else UNDEFINED_ID, perm))
    acl = tuple(entries)
    for base in (Tag.USER_OBJ, Tag.GROUP_OBJ, Tag.OTHER):
        if sum(e.tag == base for e in acl) != 1:
            raise AclFormatError(f"an ACL has exactly one {base.name} entry")
    return acl


def from_mode(mode: int, group_other_mask: int = RWX) -> Acl:
    """The minimal ACL equal to ``mode``'s permission bits (group and other bits limited to
    ``group_other_mask``)."""
    return (
        Entry(Tag.USER_OBJ, UNDEFINED_ID, (mode >> 6) & RWX),
        Entry(Tag.GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & group_other_mask),
        Entry(Tag.OTHER, UNDEFINED_ID, mode & group_other_mask),
    )


def _mask(acl: Acl) -> int | None:
    return next((e.perm for e in acl if e.tag == Tag.MASK), None)


def user_access(acl: Acl, uid: int) -> int:
    """What the named-user entry for ``uid`` really grants (its bits as far as the mask lets
    through); 0 without such an entry."""
    perm = next((e.perm for e in acl if e.tag == Tag.USER and e.qualifier == uid), 0)
    mask = _mask(acl)
    return perm if mask is None else perm & mask


def grants(acl: Acl, uid: int, perm: int) -> bool:
    return user_access(acl, uid) & perm == perm


def with_user(acl: Acl, uid: int, perm: int) -> Acl:
    """``acl`` with a named-user entry giving ``uid`` exactly ``perm``, and nobody else's
    access changed.

    The mask limits every group-class entry at once, so it has to grow to let ``perm`` through.
    Every other group-class entry is first cut down to what the old mask let it have: a
    directory made with mode 0700 inherits ``group::r-x`` behind ``mask::---``, and widening
    the mask alone would hand the owning group the r-x it never had.
    """
    old_mask = _mask(acl)
    kept: list[Entry] = []
    for entry in acl:
        if entry.tag == Tag.MASK or (entry.tag == Tag.USER and entry.qualifier == uid):
            continue
        if entry.tag in _GROUP_CLASS and old_mask is not None:
            entry = replace(entry, perm=entry.perm & old_mask)
        kept.append(entry)
    kept.append(Entry(Tag.USER, uid, perm))
    mask = 0
    for entry in kept:
        if entry.tag in _GROUP_CLASS:
            mask |= entry.perm
    kept.append(Entry(Tag.MASK, UNDEFINED_ID, mask))
    return tuple(sorted(kept, key=lambda e: (e.tag, e.qualifier)))


def effective(acl: Acl) -> dict[tuple[Tag, int], int]:
    """Each entry's access after the mask (the mask itself left out): what the kernel grants."""
    mask = _mask(acl)
    result: dict[tuple[Tag, int], int] = {}
    for entry in acl:
        if entry.tag == Tag.MASK:
            continue
        perm = entry.perm
        if mask is not None and entry.tag in _GROUP_CLASS:
            perm &= mask
        result[(entry.tag, entry.qualifier)] = perm
    return result
