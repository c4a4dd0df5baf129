"""Where a session's paths are inside an E2B sandbox, and the translation both ways.

An E2B sandbox runs everything as its user, ``user``, whose home is ``/home/user`` (E2B's
``base`` template, and boxruntime's own E2B front door). That user cannot create ``/workspace``:
the root file system is the template's, owned by root, and on an E2B-compatible server it may be
read-only with no root at all. So a session's mount paths (the workspace, default
``/workspace``, and each extra mount) live under the home directory, as LangBot's own e2b
backend puts them (reference §D.8): ``/workspace`` is ``/home/user/workspace``, ``/opt/site`` is
``/home/user/opt/site``. A mount path already under ``/home/user`` or ``/tmp`` is where it says,
and ``/tmp`` is ``/tmp``.

The session keeps its *logical* paths (what LangBot asked for). Translated on the way in: a
command's working directory, its argv, the mount paths its shell text names (at path
boundaries, on both sides: ``/home/u/workspace`` is not the workspace) and its environment
values; every file path. On the way back: the paths and error messages file operations return.
What a command prints is not translated (``pwd`` in the workspace prints
``/home/user/workspace``); ``$LANGBOT_BOX_WORKSPACE`` names the real workspace, as on the host
backend.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from boxruntime.backends.contract import SandboxFileError
from boxruntime.errors import BoxValidationError

HOME = "/home/user"  # E2B's sandbox user and its home
USER = "user"
TMP = "/tmp"
WORKSPACE_ENV = "LANGBOT_BOX_WORKSPACE"
# A mount path counts only as a whole path component: not inside a longer name on either side.
_LEFT = r"(?<![\w.\-/~})$])"
_RIGHT = r"(?=/|$|[^\w.\-])"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def real_mount_path(mount_path: str) -> str:
    """Where the mount path ``mount_path`` lives in the sandbox."""
    normal = posixpath.normpath(mount_path)
    if normal == "/":
        raise BoxValidationError(
            "mount_path / cannot be used on the e2b backend: an E2B sandbox's user can only write under "
            f"{HOME} and {TMP}; choose a directory such as /workspace"
        )
    if _inside(normal, HOME) or _inside(normal, TMP):
        return normal
    return HOME + normal


@dataclass(frozen=True)
class SandboxPaths:
    """A session's mount paths (logical) and where they are (real); the longest path wins."""

    workspace: str  # the real workspace
    mounts: tuple[tuple[str, str], ...]  # (logical, real) of the translated mounts, longest first

    @classmethod
    def build(cls, workspace: str, extras: Sequence[str] = ()) -> SandboxPaths:
        table = {posixpath.normpath(m): real_mount_path(m) for m in (*extras, workspace)}
        moved = sorted(((k, v) for k, v in table.items() if k != v), key=lambda kv: len(kv[0]), reverse=True)
        return cls(real_mount_path(workspace), tuple(moved))

    def real(self, path: str) -> str:
        """A logical absolute path as the sandbox names it (normalised)."""
        normal = posixpath.normpath(path)
        for logical, real in self.mounts:
            if _inside(normal, logical):
                return real + normal[len(logical) :]
        return normal

    def logical(self, path: str) -> str:
        """A sandbox path as the session names it."""
        for logical, real in sorted(self.mounts, key=lambda kv: len(kv[1]), reverse=True):
            if _inside(path, real):
                return logical + path[len(real) :]
        return path

    def rewrite(self, text: str) -> str:
        """Mount paths named in ``text`` (shell text, an argument, a variable's value) replaced
        by where they are, at path boundaries."""
        if not self.mounts:
            return text
        reals = dict(self.mounts)
        pattern = "|".join(re.escape(logical) for logical, _ in self.mounts)
        return re.sub(f"{_LEFT}(?P<mount>{pattern}){_RIGHT}", lambda m: reals[m.group("mount")], text)

    def rewrite_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.rewrite(value) for key, value in env.items()}

    def logical_text(self, text: str) -> str:
        """Real mount paths in a message (an error from envd) put back in the session's terms."""
        if not self.mounts:
            return text
        logicals = {real: logical for logical, real in self.mounts}
        pattern = "|".join(re.escape(real) for real in sorted(logicals, key=len, reverse=True))
        return re.sub(f"{_LEFT}(?P<real>{pattern}){_RIGHT}", lambda m: logicals[m.group("real")], text)

    def confined(self, path: str, roots: Sequence[str]) -> str:
        """The real path of the logical absolute ``path``, which must lie under one of ``roots``
        (logical too). Lexical: symlinks inside the sandbox are followed by envd, within the
        sandbox, which is the session's own."""
        if not path.startswith("/") or "\0" in path:
            raise SandboxFileError(f"{path} is not an absolute path", "EINVAL")
        normal = posixpath.normpath(path)
        if not any(_inside(normal, posixpath.normpath(root)) for root in roots):
            raise SandboxFileError(f"{path} is outside the allowed roots ({', '.join(roots)})", "EACCES")
        return self.real(normal)
