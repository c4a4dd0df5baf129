"""envd's messages (infra ``process.proto`` and ``filesystem.proto``) in proto3 JSON.

Requests accept lowerCamel and snake_case names, as a proto3 JSON parser does; ``bytes`` are
base64, ``int64`` may come as strings, enums as names or numbers. Responses use lowerCamel and
leave out what is unset.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import stat
from typing import Annotated, Any, Literal

import pydantic
from pydantic.alias_generators import to_camel

from boxruntime.backends.contract import FileInfo


def _b64(value: Any) -> Any:
    if isinstance(value, str):
        padded = value + "=" * (-len(value) % 4)
        try:
            return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            raise ValueError("not valid base64") from None
    return value


B64Bytes = Annotated[bytes, pydantic.BeforeValidator(_b64)]


class Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# ── process.Process ───────────────────────────────────────────────────────


class ProcessConfig(Message):
    cmd: str
    args: list[str] = pydantic.Field(default_factory=list)
    envs: dict[str, str] = pydantic.Field(default_factory=dict)
    cwd: str | None = None


class PtySize(Message):
    cols: int = 0
    rows: int = 0


class Pty(Message):
    size: PtySize | None = None


class StartRequest(Message):
    process: ProcessConfig
    pty: Pty | None = None
    tag: str | None = None
    stdin: bool | None = None  # unset means true (older SDKs)


class ProcessSelector(Message):
    pid: int | None = None
    tag: str | None = None


class SelectorRequest(Message):
    """Connect, CloseStdin: a process and nothing else."""

    process: ProcessSelector


class ProcessInput(Message):
    stdin: B64Bytes | None = None
    pty: B64Bytes | None = None


class SendInputRequest(Message):
    process: ProcessSelector
    input: ProcessInput = pydantic.Field(default_factory=ProcessInput)


SIGNALS = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15, 9: 9, 15: 15}


class SendSignalRequest(Message):
    process: ProcessSelector
    signal: Literal["SIGNAL_SIGKILL", "SIGNAL_SIGTERM", "SIGNAL_UNSPECIFIED", 0, 9, 15] = "SIGNAL_UNSPECIFIED"


class StreamInputStart(Message):
    process: ProcessSelector


class StreamInputData(Message):
    input: ProcessInput = pydantic.Field(default_factory=ProcessInput)


class StreamInputRequest(Message):
    start: StreamInputStart | None = None
    data: StreamInputData | None = None
    keepalive: dict[str, Any] | None = None


class UpdateRequest(Message):
    process: ProcessSelector
    pty: Pty | None = None


# ── filesystem.Filesystem ─────────────────────────────────────────────────


class PathRequest(Message):
    """Stat, MakeDir, Remove."""

    path: str


class ListDirRequest(Message):
    path: str
    depth: int = 0


class MoveRequest(Message):
    source: str
    destination: str


class WatchRequest(Message):
    """WatchDir, CreateWatcher."""

    path: str
    recursive: bool = False
    include_entry: bool = False
    allow_network_mounts: bool = False


class WatcherRequest(Message):
    """GetWatcherEvents, RemoveWatcher."""

    watcher_id: str


FileType = Literal["FILE_TYPE_FILE", "FILE_TYPE_DIRECTORY", "FILE_TYPE_SYMLINK", "FILE_TYPE_UNSPECIFIED"]
FILE_TYPES: dict[str, FileType] = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
FILE_MODES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "other": 0}
EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}


class EntryInfo(Message):
    name: str
    type: FileType
    path: str
    size: str = "0"  # int64: a string in proto3 JSON
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_time: str | None = None
    symlink_target: str | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def entry_info(info: FileInfo, path: str, name: str, user: tuple[int, int, str]) -> EntryInfo:
    """An entry as envd describes it; ``user`` (uid, gid, name) is the sandbox user, named as
    E2B names it whatever the sandbox's /etc/passwd says. A symlink that was resolved (stat)
    reads as envd reads one: the type and mode of what it leads to, its absolute target, and
    Go's "L" in the permissions."""
    kind, mode, target = info.type or "other", info.mode, info.target
    if info.type == "symlink" and info.resolved is not None:
        kind, mode, target = info.resolved_type or "other", info.resolved_mode or 0, info.resolved
    permissions = stat.filemode(FILE_MODES[info.type or "other"] | info.mode)
    if info.type == "symlink":
        permissions = "L" + permissions[1:]
    return EntryInfo(
        name=name,
        type=FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        path=path,
        size=str(info.size),
        mode=mode,
        permissions=permissions,
        owner=user[2] if info.uid == user[0] else info.owner,
        group=user[2] if info.gid == user[1] else info.group,
        modified_time=dt.datetime.fromtimestamp(info.mtime, dt.UTC).isoformat().replace("+00:00", "Z"),
        symlink_target=target,
    )
