"""Watching a directory for changes, inside the sandbox, with inotify (stdlib only, ctypes).

A watch belongs to the connection that asked for it and ends with it. Its events go out in
``fsevent`` frames as ``[name, kind]`` pairs: the name relative to the watched directory,
the kind one of create, write, remove, rename, chmod (one inotify event may give several, in
the order fsnotify reports them: create, rename, chmod, write, remove). A recursive watch adds
every directory below, and each directory created later. Where inotify is not available the
watch fails with a message that says so.
"""

import ctypes
import errno
import os
import selectors
import struct

import boxagent_fs
import boxagent_wire as wire

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
WATCH_MASK |= IN_MOVE_SELF | IN_ONLYDIR
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
KINDS = (
    (IN_CREATE | IN_MOVED_TO, wire.Change.CREATE),
    (IN_MOVE_SELF | IN_MOVED_FROM, wire.Change.RENAME),
    (IN_ATTRIB, wire.Change.CHMOD),
    (IN_MODIFY, wire.Change.WRITE),
    (IN_DELETE | IN_DELETE_SELF, wire.Change.REMOVE),
)
MAX_WATCHED_DIRS = 8192

_libc = None


class WatchError(Exception):
    def __init__(self, message, code="EINVAL"):
        Exception.__init__(self, message)
        self.code = code


def _inotify():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own C library
    return _libc


class Watch:
    """One watched directory (and, if recursive, everything below it)."""

    def __init__(self, path, recursive):
        try:
            libc = _inotify()
            self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            raise WatchError("inotify is not available in this sandbox: %s" % exc) from None
        if self.fd < 0:
            raise WatchError("inotify is not available in this sandbox: %s" % os.strerror(ctypes.get_errno()))
        self.root = path
        self.recursive = recursive
        self.dirs = {}  # watch descriptor -> directory path
        try:
            self._add(path)
            if recursive:
                self._add_below(path)
        except BaseException:
            self.close()
            raise

    def _add(self, directory):
        if len(self.dirs) >= MAX_WATCHED_DIRS:
            return
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if directory == self.root:
                name = errno.errorcode.get(err, "EIO")
                raise WatchError("cannot watch %s: %s" % (directory, os.strerror(err)), name)
            return  # a subdirectory that went away meanwhile
        self.dirs[wd] = directory

    def _add_below(self, directory, found=None):
        """Watch every directory below ``directory``; with ``found``, also list what is already
        there (a directory created under a recursive watch may fill before it is watched)."""
        for parent, subdirs, files in os.walk(directory):
            for name in subdirs:
                self._add(os.path.join(parent, name))
            if found is not None:
                found.extend(os.path.join(parent, name) for name in subdirs + files)

    def read_events(self):
        """The ``[name, kind]`` pairs that are ready (a non-blocking read)."""
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return []
        out = []
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
            raw = data[offset + EVENT.size : offset + EVENT.size + length]
            offset += EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                continue  # the kernel dropped events; there is nothing to name
            directory = self.dirs.get(wd)
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            if directory is None:
                continue
            full = os.path.join(directory, os.fsdecode(raw.rstrip(b"\0"))) if raw else directory
            name = os.path.relpath(full, self.root)
            for bits, kind in KINDS:
                if mask & bits:
                    out.append([name, kind])
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self._add(full)
                found = []
                self._add_below(full, found)
                out.extend([os.path.relpath(path, self.root), wire.Change.CREATE] for path in found)
        return out

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)  # drops every watch descriptor with it
            self.fd = -1


class DirectoryWatches:
    """The ``watch`` and ``unwatch`` requests: the watches, each with the connection its
    events go to, ended with that connection."""

    def __init__(self, sel):
        self.sel = sel
        self.watches = {}  # id -> (Watch, the connection its events go to)

    def register(self, on):
        on(wire.Op.WATCH, self.op_watch)
        on(wire.Op.UNWATCH, self.op_unwatch)

    def op_watch(self, conn, header, _body):
        watch_id = header.get(wire.Watch.WATCH)
        roots = header.get(wire.Watch.ROOTS) or ["/"]
        try:
            if not isinstance(watch_id, str) or watch_id in self.watches:
                raise boxagent_fs.FsError("watch id missing or already in use")
            path = boxagent_fs.confined(header.get(wire.Watch.PATH), roots)
            if not os.path.isdir(path):
                code = "ENOTDIR" if os.path.exists(path) else "ENOENT"
                raise boxagent_fs.FsError("%s is not a directory" % header.get(wire.Watch.PATH), code)
            watch = Watch(path, bool(header.get(wire.Watch.RECURSIVE)))
        except (boxagent_fs.FsError, WatchError) as exc:
            conn.send({wire.EV: wire.Ev.REPLY, wire.ID: header.get(wire.ID), wire.ERROR: str(exc), wire.CODE: exc.code})
            return

        self.watches[watch_id] = (watch, conn)
        self.sel.register(watch.fd, selectors.EVENT_READ, lambda _mask: self.pass_events(watch_id))
        conn.send({wire.EV: wire.Ev.REPLY, wire.ID: header.get(wire.ID)})

    def pass_events(self, watch_id):
        watch, conn = self.watches[watch_id]
        events = watch.read_events()
        if events:
            conn.send({wire.EV: wire.Ev.FSEVENT, wire.ID: watch_id, wire.FsEvent.EVENTS: events})

    def pass_all_events(self):
        """What the watches saw so far, sent now: after a file operation, before its reply, so
        a change made through the file API reaches its watchers before the call returns."""
        for watch_id in list(self.watches):
            self.pass_events(watch_id)

    def op_unwatch(self, _conn, header, _body):
        self.end_watch(header.get(wire.Watch.WATCH))

    def end_watch(self, watch_id):
        entry = self.watches.pop(watch_id, None)
        if entry is not None:
            try:
                self.sel.unregister(entry[0].fd)
            except (KeyError, ValueError):
                pass
            entry[0].close()

    def conn_lost(self, conn):
        for watch_id, (_watch, owner) in list(self.watches.items()):
            if owner is conn:
                self.end_watch(watch_id)
