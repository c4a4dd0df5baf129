"""envd's ``filesystem.Filesystem`` service over the runtime's file operations (done by the
sandbox's agent, as the sandbox user, so the sandbox's own permissions apply).

Paths are resolved as envd does (relative and ``~`` from /home/user). E2B's file API reaches
the whole sandbox, so the agent is given ``/`` as its root. Semantics follow envd: ``Remove`` of
a missing path succeeds; ``MakeDir`` says ``already_exists`` for a directory that is there;
``ListDir`` depth 0 means 1. Watches are inotify inside the sandbox: streamed (``WatchDir``,
the async SDK) or polled (``CreateWatcher`` / ``GetWatcherEvents``, the sync SDK).
"""

from __future__ import annotations

import posixpath
import secrets
from typing import Any

import anyio
from aiohttp import web

from boxruntime.backends.contract import FileChange, FileInfo, SandboxFileError
from boxruntime.edges.e2b.connect import ConnectError, ServerStream, read_single_envelope
from boxruntime.edges.e2b.envd_calls import EnvdCall
from boxruntime.edges.e2b.envd_messages import (
    EVENT_TYPES,
    EntryInfo,
    ListDirRequest,
    MoveRequest,
    PathRequest,
    WatcherRequest,
    WatchRequest,
    entry_info,
)
from boxruntime.edges.e2b.parsing import parse
from boxruntime.edges.e2b.sandboxes import USER_NAME
from boxruntime.edges.e2b.users import resolve
from boxruntime.errors import BoxSandboxError

ROOTS = ["/"]
# Entries travel in one agent frame (headers up to 1 MiB): a listing stops well before that.
MAX_LIST_ENTRIES = 2500
MAX_WATCHERS = 64


def watch_events(events: list[FileChange]) -> list[dict[str, str]]:
    return [{"name": e.name, "type": EVENT_TYPES[e.kind]} for e in events]


class FilesystemService:
    def unary(self) -> dict[str, Any]:
        return {
            "Stat": self.stat,
            "ListDir": self.list_dir,
            "MakeDir": self.make_dir,
            "Move": self.move,
            "Remove": self.remove,
            "CreateWatcher": self.create_watcher,
            "GetWatcherEvents": self.get_watcher_events,
            "RemoveWatcher": self.remove_watcher,
        }

    def streams(self) -> dict[str, Any]:
        return {"WatchDir": self.watch_dir}

    @staticmethod
    def _user(call: EnvdCall) -> tuple[int, int, str]:
        settings = call.sandboxes.runtime.settings
        return settings.sandbox_uid, settings.sandbox_gid, USER_NAME

    def _entry(self, call: EnvdCall, info: FileInfo, path: str) -> EntryInfo:
        return entry_info(info, path, posixpath.basename(path) or "/", self._user(call))

    async def stat(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        path = resolve(parse(PathRequest, body).path)
        info = await call.sandboxes.runtime.files.stat_path(call.session_id, path, ROOTS)
        if not info.exists:
            raise ConnectError("not_found", f"file not found: {path}: no such file or directory")
        return {"entry": self._entry(call, info, path).wire()}

    async def list_dir(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(ListDirRequest, body)
        path = resolve(req.path)
        depth = max(1, req.depth)
        listing = await call.sandboxes.runtime.files.list_dir(
            call.session_id, path, ROOTS, max_depth=depth, max_entries=MAX_LIST_ENTRIES
        )
        if listing.truncated:
            raise ConnectError(
                "resource_exhausted",
                f"{path} holds more than {MAX_LIST_ENTRIES} entries to depth {depth}: list a smaller depth",
            )
        entries = []
        for item in listing.entries:
            full = posixpath.join(path, item.path)
            entries.append(self._entry(call, item, full).wire())
        return {"entries": entries}

    async def make_dir(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        path = resolve(parse(PathRequest, body).path)
        try:
            info = await call.sandboxes.runtime.files.make_dir(call.session_id, path, ROOTS)
        except SandboxFileError as exc:
            if exc.code == "ENOTDIR":
                raise ConnectError("invalid_argument", str(exc)) from None
            raise
        return {"entry": self._entry(call, info, path).wire()}

    async def move(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(MoveRequest, body)
        destination = resolve(req.destination)
        info = await call.sandboxes.runtime.files.move(call.session_id, resolve(req.source), destination, ROOTS)
        return {"entry": self._entry(call, info, destination).wire()}

    async def remove(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        path = resolve(parse(PathRequest, body).path)
        try:
            await call.sandboxes.runtime.files.remove_path(call.session_id, path, ROOTS, recursive=True)
        except SandboxFileError as exc:
            if exc.code != "ENOENT":  # removing what is not there succeeds, as os.RemoveAll does
                raise
        return {}

    # ── watching ─────────────────────────────────────────────────────────

    async def _watch(self, call: EnvdCall, req: WatchRequest) -> Any:
        path = resolve(req.path)
        try:
            return await call.sandboxes.runtime.files.watch(call.session_id, path, req.recursive, ROOTS)
        except SandboxFileError as exc:
            if exc.code == "ENOENT":
                raise ConnectError("not_found", f"path {path} not found") from None
            if exc.code == "ENOTDIR":
                raise ConnectError("invalid_argument", f"path {path} not a directory") from None
            raise

    async def watch_dir(self, call: EnvdCall) -> web.StreamResponse:
        watch = await self._watch(call, parse(WatchRequest, await read_single_envelope(call.request)))
        stream = ServerStream(call.request)
        keepalive = call.keepalive_sec()
        try:
            await stream.open()
            await stream.send({"start": {}})
            with anyio.move_on_after(call.timeout if call.timeout is not None else float("inf")) as deadline:
                while True:
                    with anyio.move_on_after(keepalive) as idle:
                        batch = await watch.next_batch()
                    if idle.cancelled_caught:
                        await stream.send({"keepalive": {}})
                        continue
                    for event in watch_events(batch):
                        await stream.send({"filesystem": event})
            if deadline.cancelled_caught:
                await stream.end(ConnectError("deadline_exceeded", "context deadline exceeded"))
        except BoxSandboxError:
            stream.abort()  # the sandbox went away
        except ConnectionError:
            pass  # the client stopped watching
        finally:
            watch.close()
        return stream.response

    async def create_watcher(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        if len(call.sandbox.watchers) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"at most {MAX_WATCHERS} watchers per sandbox; remove one first")
        watch = await self._watch(call, parse(WatchRequest, body))
        watcher_id = secrets.token_hex(8)
        call.sandbox.watchers[watcher_id] = watch
        return {"watcherId": watcher_id}

    async def get_watcher_events(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        watcher_id = parse(WatcherRequest, body).watcher_id
        watch = call.sandbox.watchers.get(watcher_id)
        if watch is None:
            raise ConnectError("not_found", f"watcher with id {watcher_id} not found")
        return {"events": watch_events(watch.pending())}

    async def remove_watcher(self, call: EnvdCall, body: dict[str, Any]) -> dict[str, Any]:
        watcher_id = parse(WatcherRequest, body).watcher_id
        watch = call.sandbox.watchers.pop(watcher_id, None)
        if watch is None:
            raise ConnectError("not_found", f"watcher with id {watcher_id} not found")
        watch.close()
        return {}
