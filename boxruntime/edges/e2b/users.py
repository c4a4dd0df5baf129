"""Who an envd call runs as, and where its paths lead (envd's ``permissions`` package).

A boxruntime sandbox has one user, unprivileged: E2B's default user ``user``, whose home is the
session's workspace, ``/home/user``. ``root`` does not exist there (no capabilities, no new
privileges), so asking for it is refused with a message that says so, rather than running as
someone else. Relative paths and ``~`` start at the home directory.
"""

from __future__ import annotations

import base64
import binascii
import posixpath

from aiohttp import web

from boxruntime.edges.e2b.connect import ConnectError
from boxruntime.edges.e2b.sandboxes import USER_HOME, USER_NAME

ROOT_REFUSED = (
    "user 'root' is not available: boxruntime sandboxes run everything as the unprivileged user "
    f"'{USER_NAME}' (no capabilities, no new privileges); leave user unset or use '{USER_NAME}'"
)


def basic_user(request: web.Request) -> str | None:
    """The username of an ``Authorization: Basic user:`` header (how the SDK names a user)."""
    value = request.headers.get("Authorization", "")
    if value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError("unauthenticated", "invalid Basic authorization header") from None
    return decoded.partition(":")[0]


def check_user(name: str | None) -> str:
    """The user a call runs as; ConnectError for one that does not exist here."""
    if name in (None, "", USER_NAME):
        return USER_NAME
    if name == "root":
        raise ConnectError("permission_denied", ROOT_REFUSED)
    raise ConnectError("unauthenticated", f"invalid username: '{name}' (this sandbox has only '{USER_NAME}')")


def resolve(path: str | None, home: str = USER_HOME) -> str:
    """An absolute, normalised path: relative paths and ``~`` start at ``home``."""
    path = path or ""
    if "\0" in path:
        raise ConnectError("invalid_argument", "path must not contain NUL bytes")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(home, path)
    return posixpath.normpath(path).replace("//", "/")
