"""Write access for the (non-root) sandbox user to a host workspace that root owns.

LangBot, running as root, creates its tenant workspace ``<default_workspace>/tenants/ws-…``
itself and later writes inside it: ``inbox/<scope>/`` (mode 0700, files 0600),
``outbox/<scope>/`` (0700, recreated after every collection) and ``.mcp/<pid>/workspace`` (a
``shutil.copytree`` that ends with a chmod to the source's modes). Our sandboxes run as uid
1000, so they need a POSIX ACL entry: ``user:1000`` gets what the owner has, on the directory
and (as a default ACL) on everything created in it later. The kernel then gives that entry to
new entries by itself, but a creation mode or chmod narrows the ACL *mask* and with it our entry:
0700, 0600 and copytree's chmod leave ``user:1000`` with nothing, r-x or r--. Those are
repaired before each command, in the places LangBot writes that way (``inbox``, ``outbox``)
and along the command's working directory (the MCP server's cwd is ``.mcp/<pid>/workspace``).

Cost: a pass looks only at directories whose inode or ctime changed since they were last found
in order (a few lstat calls when nothing did), runs in a worker thread, and stops after
``MAX_ENTRIES_PER_PASS`` entries. A directory counts as in order only if its ctime is older than
the pass by ``RACY_NS``: timestamps are tick-grained, so a change in the same tick as the scan
would otherwise go unseen (git's "racy" index entries, same cure).

Safety: the pass opens every component relative to its parent with O_NOFOLLOW, stays on the
workspace's filesystem, never follows the sandbox's symlinks out, never changes an owner or a
mode, skips setuid/setgid files and files with other hard links, and gives only the sandbox
uid anything: every other entry keeps exactly the access it had (see posix_acl.with_user).
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from boxruntime.backends.common import posix_acl

log = logging.getLogger(__name__)

WATCHED = ("inbox", "outbox", ".mcp")  # where LangBot writes (0700/0600, copytree chmods) after the session started
MAX_ENTRIES_PER_PASS = 20_000
RACY_NS = 50_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_PRIVILEGED = stat.S_ISUID | stat.S_ISGID

Signature = tuple[int, int]  # (inode, ctime_ns) of a directory


@dataclass
class _Node:
    """What a pass last found at one directory."""

    settled: Signature | None = None  # it and every root-owned directory below were in order
    children: dict[str, _Node] = field(default_factory=dict)
    # A pass that ran out of budget here: the directory as it was, and how many of its entries
    # (in readdir order, which holds while the directory does not change) were put in order.
    resume: tuple[Signature, int] | None = None


@dataclass
class _Pass:
    started_ns: int
    entries_left: int
    scanned: set[int] = field(default_factory=set)  # inodes of the directories this pass read

    def take(self) -> bool:
        self.entries_left -= 1
        return self.entries_left >= 0


class WorkspaceAcl:
    """The sandbox user's ACL on one host workspace, kept in order for the session's life."""

    def __init__(self, root: str, mount_path: str, uid: int, clock: Callable[[], int] = time.time_ns) -> None:
        self.root = root
        self.mount_path = posixpath.normpath(mount_path)
        self.uid = uid
        self._clock = clock
        self._tree = _Node()
        self._lock = threading.Lock()
        self._root_fd = -1  # the directory the sandbox has mounted, held for the session's life
        self._device = 0
        self._finalizer: Callable[[], object] = lambda: None
        self._points: dict[str, list[tuple[tuple[str, ...], str, bool]]] = {}
        self._warned_budget = False

    # ── the workspace root, once, when the session starts ────────────────

    def grant_root(self) -> None:
        """Give the sandbox user the owner's access to the root and, by a default ACL, to what
        is created in it from now on. Raises OSError (ENOTSUP, EPERM, EROFS) if it cannot."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            st = os.fstat(fd)
            self._grant(fd, st)
        except BaseException:
            os.close(fd)
            raise
        self._root_fd, self._device = fd, st.st_dev
        self._finalizer = weakref.finalize(self, os.close, fd)  # should close() be missed

    def close(self) -> None:
        with self._lock:
            if self._root_fd >= 0:
                self._finalizer()
                self._root_fd = -1

    # ── before each command ─────────────────────────────────────────────

    def dirty(self, directory: str) -> bool:
        """Did anything change that a pass must look at before a command runs in
        ``directory`` (a path inside the sandbox)? Only lstat calls: cheap on every exec."""
        root_fd = self._root_fd
        if root_fd < 0:
            return False
        for path, relative, watched in self._entry_points(directory):
            try:
                st = os.stat(relative, dir_fd=root_fd, follow_symlinks=False)
            except OSError:
                if watched:
                    continue
                return False  # the rest of the way does not exist yet: the agent makes it
            if not stat.S_ISDIR(st.st_mode):
                if watched:
                    continue
                return False
            if st.st_uid == self.uid and not watched:
                continue
            node = self._find(path)
            if node is None or node.settled != (st.st_ino, st.st_ctime_ns):
                return True
        return False

    def refresh(self, directory: str) -> None:
        """Repair the sandbox user's access where it changed (blocking: run it in a thread)."""
        with self._lock:
            root_fd = self._root_fd
            if root_fd < 0:
                return
            run = _Pass(self._clock(), MAX_ENTRIES_PER_PASS)
            self._try_grant(root_fd, os.fstat(root_fd))
            for name in WATCHED:
                self._visit(root_fd, name, self._tree.children.setdefault(name, _Node()), run, watched=True)
            self._walk_to(root_fd, self._relative(directory) or (), run)
            if run.entries_left < 0 and not self._warned_budget:
                self._warned_budget = True
                log.warning(
                    "host workspace %s: more than %d entries changed at once; the rest get the sandbox "
                    "user's access on later commands",
                    self.root,
                    MAX_ENTRIES_PER_PASS,
                )

    # ── internals ───────────────────────────────────────────────────────

    def _relative(self, directory: str) -> tuple[str, ...] | None:
        """``directory`` (inside the sandbox) as components below the workspace, or None."""
        path = posixpath.normpath(directory)
        if path == self.mount_path:
            return ()
        prefix = self.mount_path.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        return tuple(path[len(prefix) :].split("/"))

    def _entry_points(self, directory: str) -> list[tuple[tuple[str, ...], str, bool]]:
        """Where a pass starts: the watched directories, then each directory on the way from
        the root to ``directory``, shallowest first: (components, relative path, watched)."""
        points = self._points.get(directory)
        if points is None:
            points = [((name,), name, True) for name in WATCHED]
            relative = self._relative(directory) or ()
            for depth in range(1, len(relative) + 1):
                path = relative[:depth]
                if not (depth == 1 and path[0] in WATCHED):
                    points.append((path, "/".join(path), False))
            if len(self._points) >= 256:  # a few working directories recur; never grow without end
                self._points.clear()
            self._points[directory] = points
        return points

    def _find(self, path: tuple[str, ...]) -> _Node | None:
        node: _Node | None = self._tree
        for name in path:
            node = node.children.get(name) if node is not None else None
        return node

    def _walk_to(self, root_fd: int, relative: tuple[str, ...], run: _Pass) -> None:
        """Visit each directory on the way to the command's working directory."""
        fd, node, opened = root_fd, self._tree, []
        try:
            for name in relative:
                child = node.children.setdefault(name, _Node())
                if not (node is self._tree and name in WATCHED):
                    self._visit(fd, name, child, run, watched=False)
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    return  # missing (the agent creates it) or not a directory we may enter
                opened.append(fd)
                node = child
        finally:
            for descriptor in opened:
                os.close(descriptor)

    def _visit(self, parent_fd: int, name: str, node: _Node, run: _Pass, watched: bool) -> bool:
        """Put directory ``name`` and its root-owned subtree in order where it changed; True
        when all of it is known to be in order (so the next pass may skip it)."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            node.settled, node.children = None, {}
            return True
        except OSError as exc:
            return _left_alone(self.root, name, exc)
        if not stat.S_ISDIR(st.st_mode) or st.st_dev != self._device:
            return True  # a file, a link, another filesystem: not a directory of this workspace
        if st.st_uid == self.uid and not watched:
            return True  # the sandbox's own: what is below it is the sandbox's or inherits its ACL
        if node.settled == (st.st_ino, st.st_ctime_ns):
            return True
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            return _left_alone(self.root, name, exc)
        try:
            st = os.fstat(fd)  # what was opened, whatever became of the name meanwhile
            if st.st_dev != self._device:
                return True
            if st.st_ino in run.scanned:  # reached again on the way to the working directory
                return node.settled is not None
            run.scanned.add(st.st_ino)
            if st.st_uid != self.uid:
                self._try_grant(fd, st)
            in_order = self._scan(fd, node, run, (st.st_ino, st.st_ctime_ns))
            after = os.fstat(fd)
            if in_order and after.st_ctime_ns < run.started_ns - RACY_NS:
                node.settled = (after.st_ino, after.st_ctime_ns)
                return True
            node.settled = None
            return False
        finally:
            os.close(fd)

    def _scan(self, fd: int, node: _Node, run: _Pass, found: Signature) -> bool:
        """Put the entries of directory ``fd`` in order. Out of budget, it remembers where it
        stopped, so that a directory larger than the budget still gets done, pass by pass."""
        done = node.resume[1] if node.resume is not None and node.resume[0] == found else 0
        node.resume = None
        in_order = True
        children: dict[str, _Node] = {}
        with os.scandir(fd) as entries:
            for index, entry in enumerate(entries):
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError as exc:
                    _left_alone(self.root, entry.name, exc)
                    continue
                child = (node.children.get(entry.name) or _Node()) if is_dir else None
                if child is not None:
                    children[entry.name] = child
                if index < done:
                    continue  # put in order by an earlier pass
                if not run.take():
                    node.children.update(children)
                    now = os.fstat(fd).st_ctime_ns
                    if in_order and now < run.started_ns - RACY_NS:
                        node.resume = ((found[0], now), index)
                    return False
                try:
                    if child is not None:
                        in_order = self._visit(fd, entry.name, child, run, watched=False) and in_order
                    elif entry.is_file(follow_symlinks=False):
                        self._grant_file(fd, entry.name)
                except OSError as exc:
                    _left_alone(self.root, entry.name, exc)
        node.children = children
        return in_order

    def _grant_file(self, dir_fd: int, name: str) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not self._may_grant_file(st):
            return
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if self._may_grant_file(st):
                self._grant(fd, st)
        finally:
            os.close(fd)

    def _may_grant_file(self, st: os.stat_result) -> bool:
        """A regular file of this filesystem that is not the sandbox's. Never a setuid/setgid
        file (the sandbox could then rewrite a privileged program), never one with other hard
        links (its other names may lie outside the workspace)."""
        return (
            stat.S_ISREG(st.st_mode)
            and st.st_uid != self.uid
            and st.st_dev == self._device
            and not st.st_mode & _PRIVILEGED
            and st.st_nlink == 1
        )

    def _try_grant(self, fd: int, st: os.stat_result) -> None:
        try:
            self._grant(fd, st)
        except (OSError, posix_acl.AclFormatError) as exc:
            log.debug("host workspace %s: an entry keeps its ACL: %s", self.root, exc)

    def _grant(self, fd: int, st: os.stat_result) -> None:
        """The sandbox user gets the owner's rwx bits; a directory also passes them on."""
        owner = (st.st_mode >> 6) & posix_acl.RWX
        access = _read_acl(fd, posix_acl.ACCESS) or posix_acl.from_mode(st.st_mode)
        if not posix_acl.grants(access, self.uid, owner):
            os.setxattr(fd, posix_acl.ACCESS, posix_acl.encode(posix_acl.with_user(access, self.uid, owner)))
        if stat.S_ISDIR(st.st_mode):
            inherited = _read_acl(fd, posix_acl.DEFAULT) or _default_base(st.st_mode)
            if not posix_acl.grants(inherited, self.uid, posix_acl.RWX):
                default = posix_acl.with_user(inherited, self.uid, posix_acl.RWX)
                os.setxattr(fd, posix_acl.DEFAULT, posix_acl.encode(default))


def _left_alone(root: str, name: str, exc: OSError) -> bool:
    """An entry that cannot be handled (gone, immutable, swapped for a link ...) is left as it
    is and counts as done: an entry that vanished changed its directory, which is looked at
    again anyway, and one that fails every time must not make every command pay for it."""
    log.debug("host workspace %s: %s left as it was: %s", root, name, exc.strerror)
    return True


def _read_acl(fd: int, name: str) -> posix_acl.Acl | None:
    try:
        return posix_acl.decode(os.getxattr(fd, name))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def _default_base(mode: int) -> posix_acl.Acl:
    """The default ACL a directory without one starts from: the creator keeps everything its
    creation mode asks for, group and others get at most what they have on the directory, and
    never write (a default ACL replaces the umask, which would have removed it)."""
    base = posix_acl.from_mode(mode, group_other_mask=0o5)
    return (posix_acl.Entry(posix_acl.Tag.USER_OBJ, posix_acl.UNDEFINED_ID, posix_acl.RWX), *base[1:])


async def before_command(acl: WorkspaceAcl | None, directory: str) -> None:
    """Put the workspace in order for a command (or file operation) in ``directory``."""
    if acl is not None and acl.dirty(directory):
        await anyio.to_thread.run_sync(acl.refresh, directory)
