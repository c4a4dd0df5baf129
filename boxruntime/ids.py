"""Turning caller-chosen ids into names safe for containers, labels and paths.

Session ids are caller data. ``safe_key`` keeps a readable prefix of the id and appends a hash
of the *raw* id, so two ids never collide after sanitising ("a/b" and "a-b" differ) and nothing
like ``..`` or ``/`` ever reaches a path.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
PREFIX_CHARS = 40
HASH_CHARS = 12


def readable(value: str, default: str = "session") -> str:
    text = _UNSAFE.sub("-", value).strip("-.").lower()
    return text[:PREFIX_CHARS].rstrip("-.") or default


def safe_key(value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{readable(value)}-{digest}"
