"""The host backend's path map: the sandbox paths a request names, as host paths (reference §D.9).

A host session has no mount namespace, so the sandbox's view is emulated by translation: the
workspace (``mount_path``, default /workspace), /tmp and each extra mount's ``mount_path``
stand for a host directory. Workdirs, managed-process cwds and file-operation paths are
mapped, and refused when they lie outside every mount or (after symlinks) escape theirs. In a
command's text the mount paths are replaced by their host paths at path boundaries, as
LangBot 0.7 does, but also with a boundary on the left (``/home/u/workspace`` is not the
workspace). A host path that the shell would read differently (spaces, quotes, ``$`` ...) is
refused in a command rather than quoted, since it may sit inside quotes already.

These checks keep requests meaning what they say; they are no security boundary: a command on
the host backend can reach anything the daemon's user can.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from boxruntime.errors import BoxValidationError
from boxruntime.security import ResolvedMount

SANDBOX_TMP = "/tmp"
# A mount path counts only as a whole path component: not inside a longer name on either side.
_LEFT = r"(?<![\w.\-/~})$])"
_RIGHT = r"(?=/|$|[^\w.\-])"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class MappedMount:
    sandbox: str  # normalised, never "/"
    host: str  # realpath
    read_only: bool


@dataclass(frozen=True)
class PathMap:
    """Sandbox paths to host paths for one session; the longest sandbox path wins."""

    mounts: tuple[MappedMount, ...]

    @classmethod
    def build(cls, workspace: ResolvedMount, tmp: str, extras: Sequence[ResolvedMount]) -> PathMap:
        table: dict[str, MappedMount] = {}
        # Later entries win a tie: an extra mount over /tmp, the workspace over both.
        for mount in (ResolvedMount(tmp, SANDBOX_TMP, read_only=False), *extras, workspace):
            sandbox = posixpath.normpath(mount.mount_path)
            if sandbox == "/":
                raise BoxValidationError(
                    f"mount_path {mount.mount_path} cannot be used on the host backend: it would stand for "
                    "every path; choose a directory such as /workspace"
                )
            table[sandbox] = MappedMount(sandbox, os.path.realpath(mount.host_path), mount.read_only)
        return cls(tuple(sorted(table.values(), key=lambda m: len(m.sandbox), reverse=True)))

    def sandbox_roots(self) -> list[str]:
        return [m.sandbox for m in self.mounts]

    def find(self, path: str) -> tuple[MappedMount, str] | None:
        """The mount ``path`` lies in, and the path's host equivalent (no symlink followed)."""
        normal = posixpath.normpath(path)
        for mount in self.mounts:
            if _inside(normal, mount.sandbox):
                return mount, mount.host + normal[len(mount.sandbox) :]
        return None

    def to_host(self, path: str, field: str) -> str:
        """``path`` as a host path; BoxValidationError when no mount holds it."""
        found = self.find(path) if path.startswith("/") else None
        if found is None:
            raise BoxValidationError(
                f"{field} {path} is outside the session's mounts ({', '.join(self.sandbox_roots())}): "
                "the host backend runs commands and file operations only there"
            )
        return found[1]

    def to_host_resolved(self, path: str, field: str) -> str:
        """Like ``to_host``, and the path must stay inside its mount once symlinks are followed."""
        mapped = self.to_host(path, field)
        mount, _ = self.find(path) or (None, "")
        assert mount is not None
        real = os.path.realpath(mapped)
        if not _inside(real, mount.host):
            raise BoxValidationError(f"{field} {path} escapes mount {mount.sandbox} (it resolves to {real})")
        return real

    def is_read_only(self, path: str) -> bool:
        found = self.find(path)
        return found is not None and found[0].read_only

    def _pattern(self) -> re.Pattern[str]:
        alternatives = "|".join(re.escape(m.sandbox) for m in self.mounts)
        return re.compile(f"{_LEFT}(?P<mount>{alternatives}){_RIGHT}")

    def rewrite_argument(self, text: str) -> str:
        """Mount paths in one argv element replaced by their host paths."""
        hosts = {m.sandbox: m.host for m in self.mounts}
        return self._pattern().sub(lambda match: hosts[match.group("mount")], text)

    def rewrite_command(self, script: str) -> str:
        """Mount paths in a shell command replaced by their host paths; BoxValidationError if
        one it names has a host path the shell would not read as one word."""
        hosts = {m.sandbox: m.host for m in self.mounts}

        def replace(match: re.Match[str]) -> str:
            sandbox = match.group("mount")
            host = hosts[sandbox]
            if shlex.quote(host) != host:
                raise BoxValidationError(
                    f"the command names {sandbox}, whose host path {host!r} contains characters the shell "
                    "treats specially; the host backend cannot rewrite it safely (use a directory "
                    "without spaces, quotes or $ for it, or refer to it as $LANGBOT_BOX_WORKSPACE)"
                )
            return host

        return self._pattern().sub(replace, script)

    def command_path(self, command: str) -> str:
        """A managed process's executable: mapped when it lies in a mount, else as given (a
        name looked up on PATH, or a host program such as /usr/bin/python3)."""
        found = self.find(command) if command.startswith("/") else None
        return command if found is None else found[1]

    def to_sandbox(self, path: str) -> str:
        """A host path as the sandbox would name it (when it lies in a mount)."""
        for mount in sorted(self.mounts, key=lambda m: len(m.host), reverse=True):
            if _inside(path, mount.host):
                return mount.sandbox + path[len(mount.host) :]
        return path

    def to_sandbox_text(self, text: str) -> str:
        """Host paths in a message (an error from the agent) put back in sandbox terms."""
        by_host = {m.host: m.sandbox for m in self.mounts}
        alternatives = "|".join(re.escape(h) for h in sorted(by_host, key=len, reverse=True))
        return re.sub(f"(?P<host>{alternatives}){_RIGHT}", lambda match: by_host[match.group("host")], text)
