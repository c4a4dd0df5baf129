"""Bounds on what a request may carry, and the checks that apply them (used by the request models).

Every size here is smaller than what the layers below can carry, so a request that passes its
model also fits them: the agent's frame (``boxagent_wire.MAX_HEADER``, 1 MiB of JSON header:
a spawn's env, argv and cwd; ``MAX_BODY``, 32 MiB: a script or a file's bytes), the kernel's
``execve`` (one argv or env string at most ``MAX_ARG_STRLEN``, 128 KiB), its paths (``PATH_MAX``
4096 bytes, ``NAME_MAX`` 255 bytes a component), ``pread``'s offsets (a signed 64-bit
``off_t``), the agent's ``select`` (a timeout in int milliseconds: ~24.8 days) and the Engine
API's image references. Strings must be valid Unicode: a lone surrogate cannot be encoded as a
path, an argument or an environment value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

MAX_ID_CHARS = 512  # session, process, exec ids and names chosen by the caller
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX: one path component
MAX_COMMAND_BYTES = 8 << 20  # a shell command (it travels as the frame's body)
MAX_TEXT_BYTES = 8 << 20  # other free text: a skill file's content, instructions
MAX_ARG_BYTES = (128 << 10) - 1  # one argument or "NAME=value", with its NUL (MAX_ARG_STRLEN)
MAX_ARGS = 4096
MAX_ARGS_TOTAL_BYTES = 256 << 10
MAX_ENV_ENTRIES = 1024
MAX_ENV_TOTAL_BYTES = 256 << 10  # every "NAME=value" together: well inside one frame header
MAX_TIMEOUT_SEC = 7 * 24 * 3600  # a week; the agent's timer could not wait past ~24.8 days
MAX_FILE_OFFSET = 1 << 62  # any file a sandbox can hold; offset + length still fits an off_t
MAX_LIST_ITEMS = 1024  # mounts, paths: any list a request names things in
MIN_CPUS = 0.01  # the Engine's own floor (less becomes "no limit" in nano-cpus)
MAX_CPUS = 1024.0
MAX_MEMORY_MB = 1 << 20  # 1 TiB
MAX_PIDS = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_QUOTA_MB = 1 << 24  # 16 TiB
MAX_COUNT = (1 << 53) - 1  # any other count or revision: what a JSON number holds exactly
MAX_IMAGE_NAME_CHARS = 255  # the registry's limit on a repository name
MAX_IMAGE_CHARS = 512

# The Engine's reference grammar (github.com/distribution/reference): [domain/]path[:tag][@digest].
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = f"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
IMAGE_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)


def utf8_size(value: str, field: str) -> int:
    """The UTF-8 size of ``value``; ValueError naming ``field`` if it holds a lone surrogate."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid Unicode (it holds a lone surrogate)") from None


def unicode_only(data: Any, field: str = "request") -> None:
    """ValueError if any string in ``data`` (JSON: dicts, lists, their keys) is not valid
    Unicode. Walked without recursion, so no nesting depth can overflow the stack."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            utf8_size(item, field)
        elif isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(key, str):
                    utf8_size(key, field)
                stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def bounded_text(value: str, field: str, max_bytes: int) -> str:
    """``value`` if it is valid Unicode of at most ``max_bytes`` UTF-8 bytes."""
    if len(value) > max_bytes or utf8_size(value, field) > max_bytes:
        raise ValueError(f"{field} must be at most {max_bytes} bytes")
    return value


def identifier(value: str, field: str, max_chars: int = MAX_ID_CHARS) -> str:
    """An id or name the caller chose: at most ``max_chars`` characters, no control characters."""
    if len(value) > max_chars:
        raise ValueError(f"{field} must be at most {max_chars} characters")
    utf8_size(value, field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{field} must not contain control characters")
    return value


def path_text(value: str, field: str) -> str:
    """A path as the kernel takes it: valid Unicode, no NUL, at most PATH_MAX bytes and
    NAME_MAX bytes a component (a longer one is refused here, not by a syscall in a sandbox)."""
    if "\0" in value:
        raise ValueError(f"{field} must not contain NUL bytes")
    if utf8_size(value, field) >= MAX_PATH_BYTES:
        raise ValueError(f"{field} must be shorter than {MAX_PATH_BYTES} bytes")
    for part in value.replace("\\", "/").split("/"):
        if len(part) > MAX_NAME_BYTES // 4 and utf8_size(part, field) > MAX_NAME_BYTES:
            raise ValueError(f"{field} has a component longer than {MAX_NAME_BYTES} bytes")
    return value


def path_list(values: list[str], field: str) -> list[str]:
    if len(values) > MAX_LIST_ITEMS:
        raise ValueError(f"{field} may name at most {MAX_LIST_ITEMS} paths")
    for value in values:
        path_text(value, field)
    return values


def environment(env: Mapping[str, str], field: str = "env") -> Mapping[str, str]:
    """Variables a command can be given: names without ``=`` or NUL, values without NUL, each
    ``NAME=value`` within what ``execve`` takes, all of them within MAX_ENV_TOTAL_BYTES."""
    if len(env) > MAX_ENV_ENTRIES:
        raise ValueError(f"{field} may hold at most {MAX_ENV_ENTRIES} variables")
    total = 0
    for key, item in env.items():
        if not key or "=" in key or "\0" in key or "\0" in item:
            raise ValueError(f"{field}: invalid environment variable name or value: {key[:64]!r}")
        size = utf8_size(key, field) + 1 + utf8_size(item, field)
        if size > MAX_ARG_BYTES:
            raise ValueError(f"{field}: {key[:64]!r} is longer than {MAX_ARG_BYTES} bytes")
        total += size + 1
    if total > MAX_ENV_TOTAL_BYTES:
        raise ValueError(f"{field} must be at most {MAX_ENV_TOTAL_BYTES} bytes in all")
    return env


def arguments(args: list[str], field: str = "args") -> list[str]:
    if len(args) > MAX_ARGS:
        raise ValueError(f"{field} may hold at most {MAX_ARGS} arguments")
    total = 0
    for arg in args:
        if "\0" in arg:
            raise ValueError(f"{field} must not contain NUL bytes")
        size = utf8_size(arg, field)
        if size > MAX_ARG_BYTES:
            raise ValueError(f"{field}: an argument is longer than {MAX_ARG_BYTES} bytes")
        total += size + 1
    if total > MAX_ARGS_TOTAL_BYTES:
        raise ValueError(f"{field} must be at most {MAX_ARGS_TOTAL_BYTES} bytes in all")
    return args


def finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number")
    return value


def image_reference(value: str) -> str:
    """An image reference the Engine accepts (``[registry/]name[:tag][@digest]``, lowercase
    name): an invalid one is refused here, not by the Engine's HTTP 400."""
    if len(value) > MAX_IMAGE_CHARS:
        raise ValueError(f"image must be at most {MAX_IMAGE_CHARS} characters")
    match = IMAGE_REFERENCE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"image {value[:80]!r} is not a valid image reference ([registry/]name[:tag][@digest], "
            "name in lowercase letters, digits and . _ - separators)"
        )
    if len(match.group("name")) > MAX_IMAGE_NAME_CHARS:
        raise ValueError(f"image name must be at most {MAX_IMAGE_NAME_CHARS} characters")
    return value
