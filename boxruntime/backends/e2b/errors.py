"""What the e2b SDK raises, as boxruntime's typed errors.

A file operation envd refused becomes a ``SandboxFileError`` whose ``code`` is the errno name
(the contract's), found in this order: the OS error text envd passes on ("no such file or
directory", "read-only file system" ...: Go's and Python's strerror texts are the same words),
then the Connect code or HTTP status, then the SDK's exception class; EIO when nothing says.
A sandbox that is gone or cannot be reached, a refused credential and a timeout are not file
errors: they are a ``BoxSandboxError`` (the sandbox, not the request, is the problem).
"""

from __future__ import annotations

import errno
import os
import re

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotRunningException,
    TimeoutException,
)

from boxruntime.backends.contract import SandboxFileError
from boxruntime.backends.e2b.paths import SandboxPaths
from boxruntime.errors import BoxError, BoxSandboxError

# Most specific first: "read-only file system" answers a write that is also "permission denied".
_BY_TEXT = (
    *(
        (name, os.strerror(getattr(errno, name)).lower())
        for name in (
            "EROFS",
            "ENOENT",
            "ENOTDIR",
            "EISDIR",
            "ENOTEMPTY",
            "EEXIST",
            "EACCES",
            "EPERM",
            "ENOSPC",
            "EDQUOT",
            "ELOOP",
            "ENAMETOOLONG",
            "EXDEV",
            "EBUSY",
            "ETXTBSY",
            "EINVAL",
        )
    ),
    ("EISDIR", "is a directory"),
    ("ENOTDIR", "not a directory"),
    ("EEXIST", "already exists"),
)
_BY_CODE = {
    Code.NOT_FOUND: "ENOENT",
    Code.ALREADY_EXISTS: "EEXIST",
    Code.PERMISSION_DENIED: "EACCES",
    Code.INVALID_ARGUMENT: "EINVAL",
    Code.RESOURCE_EXHAUSTED: "ENOSPC",
    Code.FAILED_PRECONDITION: "EINVAL",
    Code.OUT_OF_RANGE: "EINVAL",
}
# How the SDK words a Connect code or HTTP status it has no class for: "Code.X: ..." or "403: ...".
_PREFIX = re.compile(r"^(?:Code\.(?P<code>[A-Z_]+)|(?P<status>\d{3})):\s*")
_BY_STATUS = {400: "EINVAL", 403: "EACCES", 404: "ENOENT", 409: "EEXIST", 507: "ENOSPC"}
_LOST = (Code.UNAVAILABLE, Code.UNAUTHENTICATED, Code.DEADLINE_EXCEEDED, Code.CANCELED, Code.UNIMPLEMENTED)


class SandboxGone(BoxSandboxError):
    """The sandbox is gone (killed, or its E2B timeout passed): the session's next request makes
    a new one. On the wire it is a BoxSandboxError."""


def errno_of(exc: BaseException) -> str | None:
    """The errno name a refusal stands for, or None when it is no file error at all."""
    text = str(exc.message if isinstance(exc, ConnectError) else exc).lower()
    for name, words in _BY_TEXT:
        if words in text:
            return name
    if isinstance(exc, ConnectError):
        return None if exc.code in _LOST else _BY_CODE.get(exc.code, "EIO")
    if isinstance(exc, FileNotFoundException | NotFoundException):
        return "ENOENT"
    if isinstance(exc, NotEnoughSpaceException):
        return "ENOSPC"
    if isinstance(exc, InvalidArgumentException):
        return "EINVAL"
    if isinstance(exc, TimeoutException | AuthenticationException | RateLimitException):
        return None
    if isinstance(exc, SandboxException):
        match = _PREFIX.match(str(exc))
        if match and match.group("code"):
            code = Code.__members__.get(match.group("code"))
            return None if code is None or code in _LOST else _BY_CODE.get(code, "EIO")
        if match and match.group("status"):
            return _BY_STATUS.get(int(match.group("status")), "EIO")
        return "EIO"
    return None


def is_gone(exc: BaseException) -> bool:
    """The sandbox itself is gone (killed, timed out): E2B's proxy said so."""
    return isinstance(exc, SandboxNotRunningException)


def sandbox_error(exc: BaseException, doing: str, paths: SandboxPaths | None = None) -> BoxError:
    """``exc`` (raised while ``doing`` something) as the error the runtime expects."""
    if isinstance(exc, BoxError):
        return exc
    message = str(exc.message if isinstance(exc, ConnectError) else exc) or type(exc).__name__
    if paths is not None:
        message = paths.logical_text(message)
    code = errno_of(exc)
    if code is not None:
        return SandboxFileError(f"{doing}: {message}", code)
    if is_gone(exc):
        return SandboxGone(f"{doing}: the E2B sandbox is gone ({message}); the session's next request makes a new one")
    if isinstance(exc, AuthenticationException):
        return BoxSandboxError(f"{doing}: E2B refused the credentials ({message})")
    if isinstance(exc, TimeoutException | httpx.TimeoutException | TimeoutError):
        return BoxSandboxError(f"{doing}: E2B did not answer in time ({message})")
    if isinstance(exc, RateLimitException):
        return BoxSandboxError(f"{doing}: E2B is rate limiting this daemon ({message})")
    return BoxSandboxError(f"{doing}: {type(exc).__name__}: {message}")
