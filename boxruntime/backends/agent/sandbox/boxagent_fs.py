"""File operations the agent performs inside the sandbox, for the daemon's ``box_fs_*`` actions.

Stdlib only, Python >= 3.8. Every path is resolved inside the sandbox and must stay under one
of the roots the daemon names (the workspace, /tmp, extra mounts), so a symlink cannot lead a
file tool elsewhere in the sandbox. Only regular files are read or written: a FIFO or a device
would block the agent, and nothing useful lives there.

Each operation takes the request header (and body) and returns ``(reply fields, body bytes)``;
errors raise ``FsError`` with a message meant for the user.
"""

import errno
import grp
import os
import pwd
import shutil
import stat

import boxagent_usage

SPECIAL_READ = 65536


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
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


_NAMES = {}  # (database, id) -> name, as this sandbox's /etc/passwd and /etc/group say


def _name(database, ident):
    key = (database, ident)
    if key not in _NAMES:
        try:
            _NAMES[key] = (pwd.getpwuid if database == "user" else grp.getgrgid)(ident)[0]
        except KeyError:
            _NAMES[key] = str(ident)
    return _NAMES[key]


def _describe(st):
    return {
        "type": _kind(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _name("user", st.st_uid),
        "group": _name("group", st.st_gid),
    }


def _oserror(exc, path):
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return FsError("%s: %s" % (path, exc.strerror or exc), name)


def read(header, _body, roots, max_bytes):
    path = confined(header["path"], roots)
    offset = int(header.get("offset") or 0)
    length = min(int(header.get("length") or max_bytes), max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FsError(
                "%s is not a regular file" % header["path"], "EISDIR" if stat.S_ISDIR(st.st_mode) else "EINVAL"
            )
        if st.st_size == 0:
            # /proc and /sys files say 0 and make what they hold as they are read; the kernel
            # refuses to prepare megabytes for one read (ENOMEM): ask for pieces, up to a short one.
            length = min(length, SPECIAL_READ)
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    finally:
        os.close(fd)
    reply = _describe(st)
    eof = len(data) < length if st.st_size == 0 else offset + len(data) >= st.st_size
    reply.update({"path": header["path"], "offset": offset, "eof": eof})
    return reply, data


def write(header, body, roots, _max_bytes):
    target = header["path"]
    if header.get("make_parents", True):
        parent = confined(os.path.dirname(target) or "/", roots)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _oserror(exc, os.path.dirname(target)) from None
    path = confined(target, roots)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    offset = header.get("offset")
    if header.get("append"):
        flags |= os.O_APPEND
    elif offset is None:
        flags |= os.O_TRUNC
    mode = header.get("mode")
    try:
        fd = os.open(path, flags, 0o644 if mode is None else int(mode))
    except OSError as exc:
        raise _oserror(exc, target) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FsError("%s is not a regular file" % target)
        if offset is not None and not header.get("append"):
            os.lseek(fd, int(offset), os.SEEK_SET)
        view = memoryview(body)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mode is not None:
            os.fchmod(fd, int(mode))
        if header.get("own"):
            # Give the file to the sandbox user, as E2B's envd does after an upload (a no-op
            # here, since the agent is that user; watchers see it, as they see envd's).
            os.fchown(fd, os.getuid(), os.getgid())
        st = os.fstat(fd)
    except OSError as exc:
        raise _oserror(exc, target) from None
    finally:
        os.close(fd)
    reply = _describe(st)
    reply.update({"path": target, "bytes_written": len(body)})
    return reply, b""


def _sorted_entries(directory, hidden):
    with os.scandir(directory) as it:
        return sorted((e for e in it if hidden or not e.name.startswith(".")), key=lambda e: e.name)


def listing(header, _body, roots, _max_bytes):
    """Entries in name order, each directory's contents right after it (a depth-first walk,
    as ``find`` and Go's WalkDir list them); symlinks are listed, not followed."""
    base = header["path"].rstrip("/") or "/"
    real = confined(base, roots)
    limit = int(header.get("max_entries") or 1000)
    hidden = bool(header.get("include_hidden", True))
    recursive = bool(header.get("recursive"))
    max_depth = int(header.get("max_depth") or 0)  # with recursive: 0 = no limit
    try:
        top = _sorted_entries(real, hidden)
    except OSError as exc:
        raise _oserror(exc, base) from None
    entries = []
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
        if len(entries) >= limit:
            return {"path": header["path"], "entries": entries, "truncated": True}, b""
        entry = _describe(st)
        entry.update({"name": item.name, "path": prefix + item.name})
        entries.append(entry)
        if recursive and stat.S_ISDIR(st.st_mode) and (max_depth <= 0 or depth < max_depth):
            try:
                stack.append((iter(_sorted_entries(item.path, hidden)), entry["path"] + "/", depth + 1))
            except OSError:
                pass  # unreadable below: listed, not walked
    return {"path": header["path"], "entries": entries, "truncated": False}, b""


def status(header, _body, roots, _max_bytes):
    path = confined_entry(header["path"], roots)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"path": header["path"], "exists": False}, b""
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    reply = _describe(st)
    reply.update({"path": header["path"], "exists": True})
    if stat.S_ISLNK(st.st_mode):
        reply["target"] = os.readlink(path)
        # Where it leads, and what is there (nothing, for a dangling link).
        reply["resolved"] = os.path.realpath(path)
        try:
            target = os.stat(path)
            reply["resolved_type"] = _kind(target.st_mode)
            reply["resolved_mode"] = stat.S_IMODE(target.st_mode)
        except OSError:
            pass
    return reply, b""


def remove(header, _body, roots, _max_bytes):
    path = confined_entry(header["path"], roots)
    if any(os.path.realpath(path) == os.path.realpath(r) for r in roots) and not os.path.islink(path):
        raise FsError("refusing to remove %s itself" % header["path"], "EPERM")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FsError("%s does not exist" % header["path"], "ENOENT") from None
    try:
        if stat.S_ISDIR(st.st_mode):
            if header.get("recursive"):
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    return {"path": header["path"], "type": _kind(st.st_mode)}, b""


def make_dir(header, _body, roots, _max_bytes):
    """Create a directory and its parents; EEXIST if it is already there, ENOTDIR if something
    else is."""
    path = confined(header["path"], roots)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise FsError("directory already exists: %s" % header["path"], "EEXIST")
        raise FsError("path already exists but it is not a directory: %s" % header["path"], "ENOTDIR")
    try:
        os.makedirs(path, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise _oserror(exc, header["path"]) from None
    reply = _describe(st)
    reply["path"] = header["path"]
    return reply, b""


def move(header, _body, roots, _max_bytes):
    """Rename ``path`` to ``destination`` (parents made), across file systems too."""
    source = confined_entry(header["path"], roots)
    target = header["destination"]
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
        raise _oserror(exc, header["path"]) from None
    reply = _describe(st)
    reply["path"] = target
    if stat.S_ISLNK(st.st_mode):
        reply["target"] = os.readlink(destination)
    return reply, b""


OPERATIONS = {
    "read": read,
    "write": write,
    "list": listing,
    "stat": status,
    "remove": remove,
    "mkdir": make_dir,
    "move": move,
    "usage": boxagent_usage.usage,  # not a file, but as small and local: what the sandbox uses
}
