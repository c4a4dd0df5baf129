"""The e2b backend: each session is a sandbox on E2B's cloud or any E2B-compatible server
(another ``boxruntime serve``, CubeSandbox, openkruise agents ...), driven through E2B's own
SDK (``e2b``, pinned in pyproject.toml), implemented directly on the backend contract: no agent
runs in these sandboxes; envd, E2B's in-sandbox daemon, does the work.

- ``start``: ``AsyncSandbox.create`` with the spec mapped (``mapping.py``); the workspace and
  the workdir made; host mounts copied in (``workspace_sync.py``). ``stop`` copies writable
  mounts back, then kills the sandbox.
- commands: envd's process service (``process.py``), argv or ``/bin/sh -c``, paths translated
  (``paths.py``, ``command_request.py``). A missing working directory is made once, then
  remembered.
- files: envd's file service (``files.py``), polled watches (``watch.py``).
- liveness: ``alive`` asks envd's ``/health`` (502 "not found" once the sandbox is gone);
  ``known_alive`` trusts an answer from the sandbox in the last ``KNOWN_ALIVE_SEC``.
- lifetime: a sandbox is created with ``box.e2b.timeout_sec`` (300 s) and renewed by
  ``upkeep`` every minute while its session lives; a daemon that dies leaves sandboxes that E2B
  ends by itself. Orphans of dead daemons of this machine and data dir (metadata) are killed at
  start, the daemon's own at exit (``fleet.py``, with the reachability check ``probe`` makes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from connectrpc.errors import ConnectError
from e2b import AsyncSandbox
from e2b.envd.client_async import create_rpc_client
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect
from e2b.exceptions import AuthenticationException, NotFoundException

from boxruntime.backends.contract import (
    Backend,
    Command,
    CommandExit,
    CompletedCommand,
    FileChunk,
    FileInfo,
    FileWritten,
    Listing,
    Output,
    Process,
    Removed,
    SandboxHandle,
    SandboxUsage,
    Watch,
)
from boxruntime.backends.e2b import fleet, mapping, workspace_sync
from boxruntime.backends.e2b.command_request import start_error, start_request
from boxruntime.backends.e2b.errors import SandboxGone, sandbox_error
from boxruntime.backends.e2b.files import SandboxFiles
from boxruntime.backends.e2b.paths import SandboxPaths, real_mount_path
from boxruntime.backends.e2b.process import E2bProcess, start
from boxruntime.backends.e2b.watch import PolledWatch
from boxruntime.backends.e2b.workspace_sync import MountSync
from boxruntime.config import Settings
from boxruntime.errors import BoxBackendUnavailableError, BoxImageNotFoundError, BoxSandboxError
from boxruntime.models import BackendInfo, BoxSpec
from boxruntime.security import prepare_host_dirs, resolve_mounts

log = logging.getLogger(__name__)

KNOWN_ALIVE_SEC = 90.0  # longer than the minute between renewals, which are answers too
PROBE_CACHE_SEC = 10.0
QUIET_TIMEOUT_SEC = 120.0


@dataclass(kw_only=True)
class E2bSandbox(SandboxHandle):
    sandbox: AsyncSandbox
    processes: process_connect.ProcessClient
    filesystem: filesystem_connect.FilesystemClient
    files: SandboxFiles
    template: str
    mounts: list[MountSync] = field(default_factory=list)
    known_dirs: set[str] = field(default_factory=set)
    last_ok: float = 0.0  # monotonic time of the last answer from the sandbox
    lost: bool = False
    stale_watchers: list[str] = field(default_factory=list)
    cpu: tuple[float, float] = (0.0, 0.0)  # CPU seconds so far (estimated from samples), and when

    @property
    def paths(self) -> SandboxPaths:
        return self.files.paths

    def answered(self) -> None:
        self.last_ok = time.monotonic()


class E2bBackend(Backend[E2bSandbox]):
    name = "e2b"

    def __init__(self, settings: Settings, instance_id: str) -> None:
        super().__init__(settings, instance_id)
        self._live: dict[str, E2bSandbox] = {}
        self._probed: tuple[float, BackendInfo] | None = None

    def _params(self, request_timeout: float = mapping.REQUEST_TIMEOUT_SEC) -> dict[str, Any]:
        return mapping.api_params(self.settings, request_timeout)

    # ── lifecycle ────────────────────────────────────────────────────────

    async def probe(self) -> BackendInfo:
        if self._probed is not None and time.monotonic() - self._probed[0] < PROBE_CACHE_SEC:
            return self._probed[1]
        info = await fleet.reachable(self.settings)
        if info.available:
            self._probed = (time.monotonic(), info)
        return info

    def check_spec(self, spec: BoxSpec) -> None:
        for mount_path in (spec.mount_path, *(m.mount_path for m in spec.active_extra_mounts())):
            real_mount_path(mount_path)  # BoxValidationError for one that cannot be placed

    async def start(self, spec: BoxSpec, key: str, pooled: bool = False) -> E2bSandbox:
        self.check_spec(spec)
        workspace_mount, extras = resolve_mounts(spec, self.settings.mount_roots())
        mounts = [m for m in (workspace_mount, *extras) if m is not None]
        prepare_host_dirs(mounts, os.geteuid(), os.getegid())
        template = mapping.template_for(spec, self.settings)
        try:
            sandbox = await AsyncSandbox.create(
                template=template,
                timeout=self.settings.e2b_timeout_sec,
                metadata=mapping.metadata(self.settings, self.instance_id, key),
                allow_internet_access=mapping.internet(spec),
                **self._params(),
            )
        except NotFoundException as exc:
            raise BoxImageNotFoundError(
                f"E2B has no template {template!r} ({exc}): on the e2b backend an image names an E2B template "
                "(`e2b template build` makes one from a Dockerfile); the default image is "
                f"{self.settings.e2b_template or mapping.DEFAULT_TEMPLATE!r}"
            ) from None
        except AuthenticationException as exc:
            raise BoxBackendUnavailableError(f"E2B refused the API key: {exc}") from None
        except Exception as exc:
            raise sandbox_error(exc, f"creating an E2B sandbox from template {template!r}") from None
        handle = self._handle(sandbox, spec, key, template)
        try:
            await self._prepare(handle, spec, workspace_sync.plan(workspace_mount, extras))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
            raise
        self._live[handle.sandbox_id] = handle
        log.info("e2b: sandbox %s (template %s) for %s", handle.sandbox_id, template, key)
        return handle

    def _handle(self, sandbox: AsyncSandbox, spec: BoxSpec, key: str, template: str) -> E2bSandbox:
        paths = SandboxPaths.build(spec.mount_path, [m.mount_path for m in spec.active_extra_mounts()])
        processes = create_rpc_client(process_connect.ProcessClient, sandbox.envd_api_url, sandbox.connection_config)
        filesystem = create_rpc_client(
            filesystem_connect.FilesystemClient, sandbox.envd_api_url, sandbox.connection_config
        )
        handle = E2bSandbox(
            backend=self.name,
            sandbox_id=sandbox.sandbox_id,
            key=key,
            resolved_image=f"e2b template {template}",
            workspace_quota_enforced=False if spec.workspace_quota_mb > 0 else None,
            sandbox=sandbox,
            processes=processes,
            filesystem=filesystem,
            files=SandboxFiles(sandbox, paths, lambda argv: self._run_quiet(handle, argv)),
            template=template,
        )
        handle.notes += mapping.unenforced_notes(spec)
        handle.notes.append(f"paths: {spec.mount_path} is {paths.workspace} in the E2B sandbox")
        handle.answered()
        return handle

    async def _prepare(self, handle: E2bSandbox, spec: BoxSpec, mounts: list[MountSync]) -> None:
        for directory in {handle.paths.workspace, handle.paths.real(spec.workdir)}:
            await self._ensure_dir(handle, directory)
        handle.mounts = mounts
        handle.notes += await workspace_sync.upload(handle.sandbox, mounts, lambda argv: self._run_quiet(handle, argv))

    async def extend_mounts(self, handle: E2bSandbox, current: BoxSpec, requested: BoxSpec) -> BoxSpec:
        """More extra mounts for a live session: copied in like the first ones (a mount cannot be
        taken away from a sandbox that has its files: fewer or other mounts are refused)."""
        have = {(m.host_path, m.mount_path, m.mode) for m in current.active_extra_mounts()}
        wanted = requested.active_extra_mounts()
        if not have <= {(m.host_path, m.mount_path, m.mode) for m in wanted}:
            return await super().extend_mounts(handle, current, requested)
        self.check_spec(requested)
        _, extras = resolve_mounts(requested, self.settings.mount_roots())
        added = [e for e, m in zip(extras, wanted, strict=True) if (m.host_path, m.mount_path, m.mode) not in have]
        prepare_host_dirs(added, os.geteuid(), os.getegid())
        new = workspace_sync.plan(None, added)
        workspace_sync.nest([*handle.mounts, *new])  # before the upload: a new tree leaves out older inner ones
        handle.files.paths = SandboxPaths.build(requested.mount_path, [m.mount_path for m in wanted])
        handle.notes += await workspace_sync.upload(handle.sandbox, new, lambda argv: self._run_quiet(handle, argv))
        handle.mounts += new
        return current.model_copy(
            update={"extra_mounts": [*current.extra_mounts, *(m for m in wanted if m not in current.extra_mounts)]}
        )

    async def stop(self, handle: E2bSandbox, keep_workspace: bool = False) -> None:
        with anyio.CancelScope(shield=True):
            if not handle.lost:
                await self._sync_back(handle)
            await self._kill(handle)
            self._live.pop(handle.sandbox_id, None)

    async def _kill(self, handle: E2bSandbox) -> None:
        handle.lost = True
        await fleet.kill(self.settings, handle.sandbox_id)

    async def alive(self, handle: E2bSandbox) -> bool:
        if handle.lost:
            return False
        try:
            running = bool(await handle.sandbox.is_running(request_timeout=mapping.PROBE_TIMEOUT_SEC))
        except Exception as exc:
            log.warning("e2b: sandbox %s does not answer: %s", handle.sandbox_id, exc)
            return False
        if running:
            handle.answered()
        else:
            handle.lost = True
        return running

    def known_alive(self, handle: E2bSandbox) -> bool:
        return not handle.lost and time.monotonic() - handle.last_ok < KNOWN_ALIVE_SEC

    # ── commands ─────────────────────────────────────────────────────────

    async def _ensure_dir(self, handle: E2bSandbox, real: str) -> None:
        if real in handle.known_dirs:
            return
        try:
            await handle.sandbox.files.make_dir(real)  # False: it was there already
        except Exception as exc:
            error = sandbox_error(exc, f"making the directory {handle.paths.logical(real)}", handle.paths)
            handle.lost = handle.lost or isinstance(error, SandboxGone)
            raise error from None
        handle.known_dirs.add(real)

    async def _start(self, handle: E2bSandbox, command: Command, *, sync_after: bool) -> E2bProcess:
        request = start_request(command, handle.paths)
        cwd = handle.paths.real(command.cwd)
        if command.make_cwd:
            await self._ensure_dir(handle, cwd)
        try:
            try:
                started = await start(handle.processes, request, command.timeout)
            except ConnectError:
                if not (command.make_cwd and cwd in handle.known_dirs):
                    raise
                handle.known_dirs.discard(cwd)  # removed since: make it again, once
                await self._ensure_dir(handle, cwd)
                started = await start(handle.processes, request, command.timeout)
        except ConnectError as exc:
            error = start_error(exc, command, handle.paths)
            if isinstance(error, BoxSandboxError) and not await self.alive(handle):
                gone = f"the E2B sandbox {handle.sandbox_id} is gone; the session's next request makes a new one"
                raise SandboxGone(gone) from None
            raise error from None
        handle.answered()
        syncing = sync_after and any(m.writable for m in handle.mounts)
        return E2bProcess(
            handle.processes,
            started,
            terminal=command.terminal is not None,
            output_cap=command.output_cap,
            alive=lambda: self.alive(handle),
            run_quiet=lambda argv: self._run_quiet(handle, argv),
            on_end=(lambda: self._sync_back(handle)) if syncing else None,
        )

    async def run(self, handle: E2bSandbox, command: Command) -> CompletedCommand:
        return await self._collect(handle, await self._start(handle, command, sync_after=True))

    async def _collect(self, handle: E2bSandbox, process: E2bProcess) -> CompletedCommand:
        out = {1: bytearray(), 2: bytearray()}
        try:
            async for event in process.events():
                if isinstance(event, Output):
                    out[event.stream] += event.data
                elif isinstance(event, CommandExit):
                    return CompletedCommand(event, bytes(out[1]), bytes(out[2]))
        finally:
            process.cancel()  # a no-op once it has ended; else (we were cancelled) it must go
            with anyio.CancelScope(shield=True):
                await process.close()
        raise BoxSandboxError(f"the command in E2B sandbox {handle.sandbox_id} ended without its end")

    async def start_command(self, handle: E2bSandbox, command: Command, *, lasting: bool = False) -> Process:
        # Every envd process outlives its stream (lasting or not); a command that is not lasting
        # is a request's: the workspace is copied back when it ends.
        return await self._start(handle, command, sync_after=not lasting)

    async def _run_quiet(self, handle: E2bSandbox, argv: list[str]) -> None:
        """A short housekeeping command (chmod, kill, tar): BoxSandboxError unless it exits 0."""
        command = Command(cwd="/", argv=argv, timeout=QUIET_TIMEOUT_SEC, make_cwd=False)
        done = await self._collect(handle, await self._start(handle, command, sync_after=False))
        if done.exit.code != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise BoxSandboxError(f"{' '.join(argv[:2])} failed in the E2B sandbox ({done.exit.code}): {detail}")

    async def _sync_back(self, handle: E2bSandbox) -> None:
        for mount in handle.mounts:
            try:
                await workspace_sync.download(handle.sandbox, mount)
            except Exception as exc:
                log.warning("e2b: copying %s back from sandbox %s failed: %s", mount.host, handle.sandbox_id, exc)

    # ── files ────────────────────────────────────────────────────────────

    @contextlib.asynccontextmanager
    async def _on_files(self, handle: E2bSandbox) -> AsyncIterator[SandboxFiles]:
        """The sandbox's files; a sandbox found gone is remembered as such (``known_alive``)."""
        await self._remove_stale_watchers(handle)
        try:
            yield handle.files
        except SandboxGone:
            handle.lost = True
            raise
        handle.answered()

    async def _after_write(self, handle: E2bSandbox, path: str) -> None:
        """A write through the file API under a writable host mount reaches the host too."""
        real = handle.paths.real(path)
        for mount in handle.mounts:
            if mount.writable and (real == mount.real or real.startswith(mount.real.rstrip("/") + "/")):
                await self._sync_back(handle)
                return

    async def read_file(
        self, handle: E2bSandbox, path: str, roots: Sequence[str], offset: int, length: int
    ) -> FileChunk:
        async with self._on_files(handle) as files:
            return await files.read_file(path, roots, offset, length)

    async def write_file(
        self,
        handle: E2bSandbox,
        path: str,
        roots: Sequence[str],
        data: bytes,
        *,
        mode: int | None = None,
        append: bool = False,
        offset: int | None = None,
        make_parents: bool = True,
        own: bool = False,
    ) -> FileWritten:
        async with self._on_files(handle) as files:
            written = await files.write_file(
                path, roots, data, mode=mode, append=append, offset=offset, make_parents=make_parents
            )
        await self._after_write(handle, path)
        return written

    async def list_dir(
        self,
        handle: E2bSandbox,
        path: str,
        roots: Sequence[str],
        *,
        recursive: bool = False,
        max_depth: int = 0,
        max_entries: int = 1000,
        include_hidden: bool = True,
    ) -> Listing:
        async with self._on_files(handle) as files:
            return await files.list_dir(
                path,
                roots,
                recursive=recursive,
                max_depth=max_depth,
                max_entries=max_entries,
                include_hidden=include_hidden,
            )

    async def stat(self, handle: E2bSandbox, path: str, roots: Sequence[str]) -> FileInfo:
        async with self._on_files(handle) as files:
            return await files.stat(path, roots)

    async def remove(self, handle: E2bSandbox, path: str, roots: Sequence[str], *, recursive: bool = False) -> Removed:
        async with self._on_files(handle) as files:
            removed = await files.remove(path, roots, recursive=recursive)
        await self._after_write(handle, path)
        return removed

    async def make_dir(self, handle: E2bSandbox, path: str, roots: Sequence[str]) -> FileInfo:
        async with self._on_files(handle) as files:
            made = await files.make_dir(path, roots)
        await self._after_write(handle, path)
        return made

    async def move(self, handle: E2bSandbox, source: str, destination: str, roots: Sequence[str]) -> FileInfo:
        async with self._on_files(handle) as files:
            moved = await files.move(source, destination, roots)
        await self._after_write(handle, destination)
        return moved

    async def watch(self, handle: E2bSandbox, path: str, roots: Sequence[str], *, recursive: bool = False) -> Watch:
        await self._remove_stale_watchers(handle)
        real = handle.paths.confined(path, roots)
        request = filesystem_pb.CreateWatcherRequest(path=real, recursive=recursive)
        try:
            answer = await handle.filesystem.create_watcher(request, timeout_ms=30_000)
        except ConnectError as exc:
            error = sandbox_error(exc, f"watching {path}", handle.paths)
            if not isinstance(error, SandboxGone) and not await self.alive(handle):
                error = SandboxGone(f"watching {path}: the E2B sandbox is gone")
            raise error from None
        handle.answered()
        return PolledWatch(handle.filesystem, answer.watcher_id, handle.stale_watchers.append)

    async def _remove_stale_watchers(self, handle: E2bSandbox) -> None:
        while handle.stale_watchers:
            watcher_id = handle.stale_watchers.pop()
            with contextlib.suppress(ConnectError):
                request = filesystem_pb.RemoveWatcherRequest(watcher_id=watcher_id)
                await handle.filesystem.remove_watcher(request, timeout_ms=30_000)

    async def usage(self, handle: E2bSandbox, disk_path: str) -> SandboxUsage:
        """E2B's metrics: memory and disk as sampled; CPU seconds added up from its samples of
        CPU use (E2B reports a share, not a total)."""
        try:
            samples = await handle.sandbox.get_metrics(**self._params())
        except Exception as exc:
            raise sandbox_error(exc, "reading the E2B sandbox's metrics") from None
        if not samples:
            return SandboxUsage(cpu_sec=handle.cpu[0], mem_bytes=0)
        last = samples[-1]
        total, when = handle.cpu
        now = time.monotonic()
        if when:
            total += last.cpu_used_pct / 100.0 * last.cpu_count * (now - when)
        handle.cpu = (total, now)
        return SandboxUsage(
            cpu_sec=total, mem_bytes=last.mem_used, disk_total=last.disk_total, disk_used=last.disk_used
        )

    # ── the backend as a whole ───────────────────────────────────────────

    async def upkeep(self) -> None:
        """Renew every live sandbox's E2B timeout (the runtime calls this every minute)."""
        for handle in list(self._live.values()):
            if handle.lost:
                continue
            try:
                await handle.sandbox.set_timeout(self.settings.e2b_timeout_sec, **self._params())
            except NotFoundException:
                handle.lost = True
                log.warning("e2b: sandbox %s is gone (E2B ended it)", handle.sandbox_id)
                continue
            except Exception as exc:
                log.warning("e2b: renewing sandbox %s failed: %s", handle.sandbox_id, exc)
                continue
            handle.answered()
            await self._remove_stale_watchers(handle)

    async def cleanup_orphans(self, spare: Collection[str] = ()) -> list[str]:
        return await fleet.remove_orphans(self.settings, self.instance_id, spare)

    async def remove_own(self) -> list[str]:
        removed = []
        for handle in list(self._live.values()):
            await self._kill(handle)
            self._live.pop(handle.sandbox_id, None)
            removed.append(handle.sandbox_id)
        return removed + await fleet.remove_instance(self.settings, self.instance_id)
