"""The agent's wire schema, declared once: the frame format, every request and event name, the
header fields of each, and the one encoder and incremental decoder both ends use.

Stdlib only, Python >= 3.8. The in-sandbox agent imports it as ``boxagent_wire`` (its own
directory is its import path); the daemon imports the same file as
``boxruntime.backends.agent.sandbox.boxagent_wire``. Unlike the rest of this directory it is
typed and checked by mypy strict, so the daemon's side gets a checked view of the same names.
No other module on either side spells a frame constant or a name declared here.

Frames, both ways: ``>II`` (header length, body length), a JSON object header, raw body bytes.
A request names its operation in ``op`` (``Op``), an event its kind in ``ev`` (``Ev``); ``id``
names the process, the request or the watch the frame is about (each message's doc says which).
The field classes below hold the other header fields, one class per message or subject.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    Header = dict[str, Any]

VERSION: Final = 3  # sent in ``hello``; raised when a change would break the other side
PREFIX: Final = struct.Struct(">II")  # header length, body length
MAX_HEADER: Final = 1 << 20
MAX_BODY: Final = 32 << 20

# ── fields every message may carry ───────────────────────────────────────

OP: Final = "op"  # a request's operation (Op)
EV: Final = "ev"  # an event's kind (Ev)
ID: Final = "id"  # the process, request token or watch the frame is about
TARGET: Final = "target"  # the process a request is about, where ``id`` is the request's token
ERROR: Final = "error"  # a failure, in words meant for the user
CODE: Final = "code"  # with ``error`` in a reply: an errno name (EINVAL, EPIPE, ...)


class Op:
    """Request names. ``id`` is the request's token unless said otherwise; a request with a
    token is answered by one ``reply`` (or ``error``) event carrying it."""

    PING: Final = "ping"  # reply: Ping
    FS: Final = "fs"  # a file operation (Fs, FsOp); reply: its result or ERROR and CODE
    SPAWN: Final = "spawn"  # start a command, ``id`` its process id (Spawn); body: the script
    TAKE_FDS: Final = "take_fds"  # the TARGET process's stdio, passed as SCM_RIGHTS (TakeFds)
    SIGNAL: Final = "signal"  # signal process ``id``'s tree (Signal)
    ATTACH: Final = "attach"  # process ``id``'s events come to this connection now: ``attached``
    INPUT: Final = "input"  # body: data for TARGET's stdin (Input); replied once written
    RESIZE: Final = "resize"  # TARGET's terminal size (Window)
    WATCH: Final = "watch"  # watch a directory (Watch); replied once watching
    UNWATCH: Final = "unwatch"  # end a watch (Watch.WATCH); no reply
    # This connection becomes the stdio socket named ``id`` of a later spawn (Spawn.STDIO):
    # replied, then no more frames on it either way, only the process's bytes.
    STDIO: Final = "stdio"


class Ev:
    """Event names. ``id`` is a process id unless said otherwise."""

    HELLO: Final = "hello"  # the first frame on every connection (Hello)
    REPLY: Final = "reply"  # ``id`` the request token; ERROR and CODE if it failed
    ERROR: Final = "error"  # a request the agent could not handle at all: ERROR
    FAILED: Final = "failed"  # a spawn or attach that did not happen: ERROR
    STARTED: Final = "started"  # Started (only if the spawn asked for it)
    OUT: Final = "out"  # output (Out); body: the bytes
    EXIT: Final = "exit"  # the process ended (Exit); body: a collected command's output
    ATTACHED: Final = "attached"  # answers ``attach``
    FSEVENT: Final = "fsevent"  # ``id`` the watch; changes in a watched directory (FsEvent)


# ── fields of each message ───────────────────────────────────────────────


class Hello:
    VERSION: Final = "version"  # the agent's VERSION
    PID: Final = "pid"  # the agent's own pid
    DETACHED: Final = "detached"  # ids of kept processes nobody is attached to


class Ping:
    PROCS: Final = "procs"  # reply: how many processes the agent tracks


class Spawn:
    CWD: Final = "cwd"
    ENV: Final = "env"  # added to the agent's own environment
    ARGV: Final = "argv"  # run this argv; without it the body runs under /bin/sh
    TIMEOUT: Final = "timeout"  # seconds; then the process group is killed
    KILL_GRACE: Final = "kill_grace"  # on timeout: SIGTERM, then SIGKILL this much later
    OUTPUT_CAP: Final = "output_cap"  # bytes forwarded per stream
    COLLECT: Final = "collect"  # no ``out`` events: the output rides with ``exit``
    STDIN: Final = "stdin"  # a stdin pipe (fed by ``input``, or by the daemon after handoff)
    TTY: Final = "tty"  # on a terminal the agent holds: a Window object
    PTY: Final = "pty"  # on a terminal handed over with the pipes: [cols, rows]
    HANDOFF: Final = "handoff"  # the daemon takes the stdio (take_fds) instead of frames
    KEEP_ON_DISCONNECT: Final = "keep_on_disconnect"  # outlives its connection (with handoff)
    NOTIFY_STARTED: Final = "notify_started"  # send ``started``
    MAKE_CWD: Final = "make_cwd"  # create a missing workdir (default true)
    # [stdin token or null, stdout token, stderr token]: sockets opened with Op.STDIO become the
    # process's stdio, where its pipes cannot be handed over (gVisor: boxagent_stdio)
    STDIO: Final = "stdio"


class Window:
    """A terminal size: the ``tty`` object of a spawn, and the fields of ``resize``."""

    ROWS: Final = "rows"
    COLS: Final = "cols"


class Started:
    PID: Final = "pid"


class Out:
    STREAM: Final = "s"  # 1 stdout, 2 stderr


class Exit:
    CODE: Final = "code"  # the exit code, or 128 + the signal
    SIGNAL: Final = "signal"  # the signal that ended it, or null
    REASON: Final = "reason"  # one of Reason
    WALL_MS: Final = "wall_ms"
    CPU_MS: Final = "cpu_ms"
    PEAK_RSS_KB: Final = "peak_rss_kb"
    TOTALS: Final = "totals"  # [stdout bytes, stderr bytes] written, forwarded or not
    OUT_LEN: Final = "out_len"  # a collected command: the body is stdout then stderr, split here


class Reason:
    """Why a process ended (Exit.REASON)."""

    EXIT: Final = "exit"
    SIGNAL: Final = "signal"
    TIMEOUT: Final = "timeout"
    OOM: Final = "oom"
    CANCELLED: Final = "cancelled"


REASONS: Final = (Reason.EXIT, Reason.SIGNAL, Reason.TIMEOUT, Reason.OOM, Reason.CANCELLED)


class Signal:
    SIGNAL: Final = "signal"  # the number (default SIGTERM)
    CANCEL: Final = "cancel"  # the exit is then reported as ``cancelled``
    ACK: Final = "ack"  # a token: reply once sent (for SIGKILL: once the process is gone)
    FOUND: Final = "found"  # reply: whether the process was there


class TakeFds:
    STDIN: Final = "stdin"  # reply: whether the first descriptor is a stdin (3 fds, else 2)


class Input:
    EOF: Final = "eof"  # close the stdin after the body


class Fs:
    """Request fields of the file operations (which one: OPERATION, an FsOp), and their
    replies (besides an Entry's fields)."""

    OPERATION: Final = "fs"
    ROOTS: Final = "roots"  # the paths must resolve under one of these
    PATH: Final = "path"
    OFFSET: Final = "offset"  # read, write
    LENGTH: Final = "length"  # read
    MAKE_PARENTS: Final = "make_parents"  # write
    APPEND: Final = "append"  # write
    MODE: Final = "mode"  # write
    OWN: Final = "own"  # write: give the file to the sandbox user
    RECURSIVE: Final = "recursive"  # list, remove
    MAX_ENTRIES: Final = "max_entries"  # list
    INCLUDE_HIDDEN: Final = "include_hidden"  # list
    MAX_DEPTH: Final = "max_depth"  # list
    DESTINATION: Final = "destination"  # move
    # Replies
    EOF: Final = "eof"  # read
    BYTES_WRITTEN: Final = "bytes_written"  # write
    ENTRIES: Final = "entries"  # list: Entry objects
    TRUNCATED: Final = "truncated"  # list
    EXISTS: Final = "exists"  # stat
    LINK_TARGET: Final = "target"  # stat, move of a symlink
    RESOLVED: Final = "resolved"  # stat of a symlink: where it leads
    RESOLVED_TYPE: Final = "resolved_type"
    RESOLVED_MODE: Final = "resolved_mode"
    CPU_SEC: Final = "cpu_sec"  # usage
    MEM_BYTES: Final = "mem_bytes"  # usage
    DISK_TOTAL: Final = "disk_total"  # usage
    DISK_USED: Final = "disk_used"  # usage


class FsOp:
    READ: Final = "read"
    WRITE: Final = "write"
    LIST: Final = "list"
    STAT: Final = "stat"
    REMOVE: Final = "remove"
    MKDIR: Final = "mkdir"
    MOVE: Final = "move"
    USAGE: Final = "usage"  # not a file: what the sandbox uses (cpu, memory, disk at PATH)


class Entry:
    """A file as a reply describes it."""

    TYPE: Final = "type"  # one of EntryType
    SIZE: Final = "size"
    MODE: Final = "mode"
    MTIME: Final = "mtime"
    UID: Final = "uid"
    GID: Final = "gid"
    OWNER: Final = "owner"
    GROUP: Final = "group"
    NAME: Final = "name"  # list
    PATH: Final = "path"  # list: relative to the listed directory


class EntryType:
    FILE: Final = "file"
    DIR: Final = "dir"
    SYMLINK: Final = "symlink"
    OTHER: Final = "other"


class Watch:
    WATCH: Final = "watch"  # the watch's id, chosen by the daemon
    PATH: Final = "path"
    RECURSIVE: Final = "recursive"
    ROOTS: Final = "roots"


class FsEvent:
    EVENTS: Final = "events"  # [name relative to the watched directory, one of Change] pairs


class Change:
    """What happened to a watched name (FsEvent)."""

    CREATE: Final = "create"
    WRITE: Final = "write"
    REMOVE: Final = "remove"
    RENAME: Final = "rename"
    CHMOD: Final = "chmod"


CHANGES: Final = (Change.CREATE, Change.WRITE, Change.REMOVE, Change.RENAME, Change.CHMOD)


# ── the codec ────────────────────────────────────────────────────────────


def encode(header: Header, body: bytes = b"") -> bytes:
    """One frame."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def encode_into(buffer: bytearray, header: Header, body: bytes = b"") -> None:
    """One frame, appended to ``buffer`` (a large body is copied once, not twice)."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    buffer += PREFIX.pack(len(raw), len(body))
    buffer += raw
    if body:
        buffer += body


class FrameError(ValueError):
    """The bytes are not frames of this protocol."""


class FrameTooLarge(FrameError):
    """A frame's lengths exceed the limits: the stream cannot be followed any further."""


class BadHeader(FrameError):
    """A frame whose header is not a JSON object. The frame is consumed: the next one can be
    read, if the reader chooses to go on."""


class Decoder:
    """Frames out of a byte stream, as the bytes arrive (``feed``, then ``next_frame`` until
    it returns None)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def missing(self) -> int:
        """How many more bytes complete the next frame as far as is known (its length prefix
        first): a blocking reader that reads exactly this never reads past a frame."""
        have = len(self._buffer)
        if have < PREFIX.size:
            return PREFIX.size - have
        header_len, body_len = PREFIX.unpack_from(self._buffer)
        return max(0, int(PREFIX.size + header_len + body_len - have))

    def next_frame(self) -> tuple[Header, bytes] | None:
        """The next whole frame (header, body), or None until more bytes come."""
        buffer = self._buffer
        if len(buffer) < PREFIX.size:
            return None
        header_len, body_len = PREFIX.unpack_from(buffer)
        if header_len > MAX_HEADER or body_len > MAX_BODY:
            raise FrameTooLarge("frame too large (%d+%d bytes)" % (header_len, body_len))
        end = PREFIX.size + header_len + body_len
        if len(buffer) < end:
            return None
        raw = buffer[PREFIX.size : PREFIX.size + header_len]
        body = bytes(buffer[PREFIX.size + header_len : end])
        del buffer[:end]
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadHeader("frame header is not JSON") from None
        if not isinstance(header, dict):
            raise BadHeader("frame header is not an object")
        return header, body
