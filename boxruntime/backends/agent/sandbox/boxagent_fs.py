"""File operations the agent performs inside the sandbox, for the daemon's ``box_fs_*`` actions.

Stdlib only, Python >= 3.8. Every path is resolved inside the sandbox and must stay under one
of the roots the daemon names (the workspace, /tmp, extra mounts), so a symlink cannot lead a
file tool elsewhere in the sandbox. Only regular files are read or written: a FIFO or a device
would block the agent, and nothing useful lives there.

Each operation takes the request header (and body) and returns ``(reply fields, body bytes)``;
errors raise ``FsError`` with a message meant for the user. ``FileOps`` answers the ``fs``
request with them.
"""

import errno
import grp
import os
import pwd
import shutil
import stat

import boxagent_usage
import boxagent_wire as wire

SPECIAL_READ = 65536
MAX_BYTES = 8 << 20  # one file operation moves at most this much; larger files go in pieces
# A listing stops (truncated) once its entries take about this much JSON: the whole reply must
# fit one frame header, or the daemon would drop the connection.
LISTING_BUDGET = wire.MAX_HEADER // 2


class FsError(Exception):
    def __init__(self, message, code="EINVAL"):
        Exception.__init__(self, message)
        self.code = code


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def confined(path, roots):
    """The real path of ``path``; FsError unless it lies under one of ``roots``."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise FsError("path must be an absolute path inside the sandbox")
    real = os.path.realpath(path)
    for root in roots:
        if _inside(real, os.path.realpath(root)):
            return real
    raise FsError("%s is outside the sandbox workspace (allowed: %s)" % (path, ", ".join(roots)), "EACCES")


def open_resolved(real, flags, mode=0o644):
    """Open ``real``, a path ``confined`` resolved (absolute, no symlink, no ``..``), without
    following a symlink anywhere on the way: each directory is opened below the previous one
    with O_NOFOLLOW, and so is the file. A component a process in the sandbox swapped for a
    symlink since the path was resolved is refused (ELOOP, ENOTDIR), never followed out of
    the roots the path was checked against."""
    parts = [part for part in real.split("/") if part]
    directory = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            below = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            os.close(directory)
            directory = below
        return os.open(parts[-1] if parts else ".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
    finally:
        os.close(directory)


def confined_entry(path, roots):
    """Like ``confined`` but the last component is not followed (for stat/remove of a link)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise FsError("path must be an absolute path inside the sandbox")
    path = os.path.normpath(path)
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if not any(_inside(real, os.path.realpath(r)) for r in roots):
        raise FsError("%s is outside the sandbox workspace (allowed: %s)" % (path, ", ".join(roots)), "EACCES")
    return real


def _kind(mode):
    if stat.S_ISREG(mode):
        return wire.EntryType.FILE
    if stat.S_ISDIR(mode):
        return wire.EntryType.DIR
    if stat.S_ISLNK(mode):
        return wire.EntryType.SYMLINK
    return wire.EntryType.OTHER


_NAMES = {}  # (lookup, id) -> name, as this sandbox's /etc/passwd and /etc/group say


def _name(lookup, ident):
    key = (lookup, ident)
    if key not in _NAMES:
        try:
            _NAMES[key] = lookup(ident)[0]
        except KeyError:
            _NAMES[key] = str(ident)
    return _NAMES[key]


def _describe(st):
    return {
        wire.Entry.TYPE: _kind(st.st_mode),
        wire.Entry.SIZE: st.st_size,
        wire.Entry.MODE: stat.S_IMODE(st.st_mode),
        wire.Entry.MTIME: st.st_mtime,
        wire.Entry.UID: st.st_uid,
        wire.Entry.GID: st.st_gid,
        wire.Entry.OWNER: _name(pwd.getpwuid, st.st_uid),
        wire.Entry.GROUP: _name(grp.getgrgid, st.st_gid),
    }


def _oserror(exc, path):
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return FsError("%s: %s" % (path, exc.strerror or exc), name)


def read(header, _body, roots, max_bytes):
    path = confined(header[wire.Fs.PATH], roots)
    offset = int(header.get(wire.Fs.OFFSET) or 0)
    length = min(int(header.get(wire.Fs.LENGTH) or max_bytes), max_bytes)
    try:
        fd = open_resolved(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FsError(
                "%s is not a regular file" % header[wire.Fs.PATH], "EISDIR" if stat.S_ISDIR(st.st_mode) else "EINVAL"
            )
        if st.st_size == 0:
            # /proc and /sys files say 0 and make what they hold as they are read; the kernel
            # refuses to prepare megabytes for one read (ENOMEM): ask for pieces, up to a short one.
            length = min(length, SPECIAL_READ)
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    finally:
        os.close(fd)
    reply = _describe(st)
    eof = len(data) < length if st.st_size == 0 else offset + len(data) >= st.st_size
    reply.update({wire.Fs.PATH: header[wire.Fs.PATH], wire.Fs.OFFSET: offset, wire.Fs.EOF: eof})
    return reply, data


def write(header, body, roots, _max_bytes):
    target = header[wire.Fs.PATH]
    if header.get(wire.Fs.MAKE_PARENTS, True):
        parent = confined(os.path.dirname(target) or "/", roots)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _oserror(exc, os.path.dirname(target)) from None
    path = confined(target, roots)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
    offset = header.get(wire.Fs.OFFSET)
    if header.get(wire.Fs.APPEND):
        flags |= os.O_APPEND
    elif offset is None:
        flags |= os.O_TRUNC
    mode = header.get(wire.Fs.MODE)
    try:
        fd = open_resolved(path, flags, 0o644 if mode is None else int(mode))
    except OSError as exc:
        raise _oserror(exc, target) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FsError("%s is not a regular file" % target)
        if offset is not None and not header.get(wire.Fs.APPEND):
            os.lseek(fd, int(offset), os.SEEK_SET)
        view = memoryview(body)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mode is not None:
            os.fchmod(fd, int(mode))
        if header.get(wire.Fs.OWN):
            # Give the file to the sandbox user, as E2B's envd does after an upload (a no-op
            # here, since the agent is that user; watchers see it, as they see envd's).
            os.fchown(fd, os.getuid(), os.getgid())
        st = os.fstat(fd)
    except OSError as exc:
        raise _oserror(exc, target) from None
    finally:
        os.close(fd)
    reply = _describe(st)
    reply.update({wire.Fs.PATH: target, wire.Fs.BYTES_WRITTEN: len(body)})
    return reply, b""


def _sorted_entries(directory, hidden):
    with os.scandir(directory) as it:
        return sorted((e for e in it if hidden or not e.name.startswith(".")), key=lambda e: e.name)


def listing(header, _body, roots, _max_bytes):
    """Entries in name order, each directory's contents right after it (a depth-first walk,
    as ``find`` and Go's WalkDir list them); symlinks are listed, not followed."""
    base = header[wire.Fs.PATH].rstrip("/") or "/"
    real = confined(base, roots)
    limit = int(header.get(wire.Fs.MAX_ENTRIES) or 1000)
    hidden = bool(header.get(wire.Fs.INCLUDE_HIDDEN, True))
    recursive = bool(header.get(wire.Fs.RECURSIVE))
    max_depth = int(header.get(wire.Fs.MAX_DEPTH) or 0)  # with recursive: 0 = no limit
    try:
        top = _sorted_entries(real, hidden)
    except OSError as exc:
        raise _oserror(exc, base) from None
    entries = []
    size = 0  # about as much JSON as the entries take
    stack = [(iter(top), "", 1)]  # the directories being walked, innermost last
    while stack:
        items, prefix, depth = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        try:
            st = item.stat(follow_symlinks=False)
        except OSError:
            continue
        if len(entries) >= limit or size >= LISTING_BUDGET:
            return {wire.Fs.PATH: header[wire.Fs.PATH], wire.Fs.ENTRIES: entries, wire.Fs.TRUNCATED: True}, b""
        entry = _describe(st)
        entry.update({wire.Entry.NAME: item.name, wire.Entry.PATH: prefix + item.name})
        entries.append(entry)
        # Names may be escaped up to 6 bytes a byte (\u00XX); the other fields are short.
        size += 200 + 6 * (len(entry[wire.Entry.NAME]) + len(entry[wire.Entry.PATH]) + len(entry[wire.Entry.OWNER]))
        if recursive and stat.S_ISDIR(st.st_mode) and (max_depth <= 0 or depth < max_depth):
            try:
                stack.append((iter(_sorted_entries(item.path, hidden)), entry[wire.Entry.PATH] + "/", depth + 1))
            except OSError:
                pass  # unreadable below: listed, not walked
    return {wire.Fs.PATH: header[wire.Fs.PATH], wire.Fs.ENTRIES: entries, wire.Fs.TRUNCATED: False}, b""


def status(header, _body, roots, _max_bytes):
    path = confined_entry(header[wire.Fs.PATH], roots)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {wire.Fs.PATH: header[wire.Fs.PATH], wire.Fs.EXISTS: False}, b""
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    reply = _describe(st)
    reply.update({wire.Fs.PATH: header[wire.Fs.PATH], wire.Fs.EXISTS: True})
    if stat.S_ISLNK(st.st_mode):
        reply[wire.Fs.LINK_TARGET] = os.readlink(path)
        # Where it leads, and what is there (nothing, for a dangling link).
        reply[wire.Fs.RESOLVED] = os.path.realpath(path)
        try:
            target = os.stat(path)
            reply[wire.Fs.RESOLVED_TYPE] = _kind(target.st_mode)
            reply[wire.Fs.RESOLVED_MODE] = stat.S_IMODE(target.st_mode)
        except OSError:
            pass
    return reply, b""


def remove(header, _body, roots, _max_bytes):
    path = confined_entry(header[wire.Fs.PATH], roots)
    if any(os.path.realpath(path) == os.path.realpath(r) for r in roots) and not os.path.islink(path):
        raise FsError("refusing to remove %s itself" % header[wire.Fs.PATH], "EPERM")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FsError("%s does not exist" % header[wire.Fs.PATH], "ENOENT") from None
    try:
        if stat.S_ISDIR(st.st_mode):
            if header.get(wire.Fs.RECURSIVE):
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    return {wire.Fs.PATH: header[wire.Fs.PATH], wire.Entry.TYPE: _kind(st.st_mode)}, b""


def make_dir(header, _body, roots, _max_bytes):
    """Create a directory and its parents; EEXIST if it is already there, ENOTDIR if something
    else is."""
    path = confined(header[wire.Fs.PATH], roots)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise FsError("directory already exists: %s" % header[wire.Fs.PATH], "EEXIST")
        raise FsError("path already exists but it is not a directory: %s" % header[wire.Fs.PATH], "ENOTDIR")
    try:
        os.makedirs(path, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    reply = _describe(st)
    reply[wire.Fs.PATH] = header[wire.Fs.PATH]
    return reply, b""


def move(header, _body, roots, _max_bytes):
    """Rename ``path`` to ``destination`` (parents made), across file systems too."""
    source = confined_entry(header[wire.Fs.PATH], roots)
    target = header[wire.Fs.DESTINATION]
    parent = confined(os.path.dirname(target) or "/", roots)
    destination = confined_entry(target, roots)
    try:
        os.lstat(source)
        os.makedirs(parent, exist_ok=True)
        try:
            os.rename(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, destination)  # another mount (the workspace and /tmp)
        st = os.lstat(destination)
    except OSError as exc:
        raise _oserror(exc, header[wire.Fs.PATH]) from None
    reply = _describe(st)
    reply[wire.Fs.PATH] = target
    if stat.S_ISLNK(st.st_mode):
        reply[wire.Fs.LINK_TARGET] = os.readlink(destination)
    return reply, b""


OPERATIONS = {
    wire.FsOp.READ: read,
    wire.FsOp.WRITE: write,
    wire.FsOp.LIST: listing,
    wire.FsOp.STAT: status,
    wire.FsOp.REMOVE: remove,
    wire.FsOp.MKDIR: make_dir,
    wire.FsOp.MOVE: move,
    wire.FsOp.USAGE: boxagent_usage.usage,  # not a file, but as small and local: what the sandbox uses
}


class FileOps:
    """The ``fs`` request: one file operation, small and local, so it runs inline."""

    def __init__(self, watches):
        self.watches = watches  # told after each operation, so watchers hear of it before the reply

    def register(self, on):
        on(wire.Op.FS, self.op_fs)

    def op_fs(self, conn, header, body):
        operation = OPERATIONS.get(header.get(wire.Fs.OPERATION))
        roots = header.get(wire.Fs.ROOTS) or ["/"]
        try:
            if operation is None:
                raise FsError("unknown file operation %r" % header.get(wire.Fs.OPERATION))
            try:
                reply, data = operation(header, body, roots, MAX_BYTES)
            except FsError:
                raise
            except OSError as exc:  # one the operation did not expect: its errno all the same
                raise _oserror(exc, header.get(wire.Fs.PATH)) from None
            except (ValueError, TypeError, OverflowError, KeyError) as exc:  # a field out of range
                raise FsError("invalid file request: %s: %s" % (type(exc).__name__, exc)) from None
        except FsError as exc:
            conn.send({wire.EV: wire.Ev.REPLY, wire.ID: header.get(wire.ID), wire.ERROR: str(exc), wire.CODE: exc.code})
            return
        finally:
            self.watches.pass_all_events()
        reply[wire.EV] = wire.Ev.REPLY
        reply[wire.ID] = header.get(wire.ID)
        conn.send(reply, data)
