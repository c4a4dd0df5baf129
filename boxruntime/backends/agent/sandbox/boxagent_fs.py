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
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    reply = _describe(st)
    reply.update({"path": header["path"], "offset": offset, "eof": offset + len(data) >= st.st_size})
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


def listing(header, _body, roots, _max_bytes):
    base = header["path"].rstrip("/") or "/"
    real = confined(base, roots)
    limit = int(header.get("max_entries") or 1000)
    hidden = bool(header.get("include_hidden", True))
    recursive = bool(header.get("recursive"))
    max_depth = int(header.get("max_depth") or 0)  # with recursive: 0 = no limit
    entries = []
    truncated = False
    pending = [(real, "", 1)]
    while pending and not truncated:
        directory, prefix, depth = pending.pop(0)
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if directory == real:
                raise _oserror(exc, base) from None
            continue
        for item in items:
            if not hidden and item.name.startswith("."):
                continue
            if len(entries) >= limit:
                truncated = True
                break
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            rel = prefix + item.name
            entry = _describe(st)
            entry.update({"name": item.name, "path": rel})
            entries.append(entry)
            if recursive and stat.S_ISDIR(st.st_mode) and (max_depth <= 0 or depth < max_depth):
                pending.append((item.path, rel + "/", depth + 1))
    return {"path": header["path"], "entries": entries, "truncated": truncated}, b""


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
