"""Re-adoption: a daemon that starts takes over the sessions its dead predecessors left.

A predecessor is dead when its instance lock is free (boxruntime.instance): it crashed, was
killed, or handed over on purpose (an upgrade: SIGUSR2, or ``keep_sandboxes``). Under the data
dir's adoption lock this daemon claims their session records (runtime/records.py), asks the
backend to ``recover`` each sandbox and each managed process the record names, and registers
them as its own: same session ids, specs, persistence and timestamps; the same processes (same
pids) with the output they wrote meanwhile kept for the next relay client. Lasting processes
no record names are ended. Whatever is left of dead daemons afterwards — sandboxes nobody
claimed, pooled ones — is removed by the backend's orphan cleanup, in the same lock, sparing
every sandbox a live daemon's records name. A live daemon's sandboxes are never touched.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pydantic

from boxruntime.backends.contract import Backend
from boxruntime.instance import adoption_lock
from boxruntime.models import BoxSpec
from boxruntime.runtime.processes import ManagedProcess, ProcessManager
from boxruntime.runtime.records import RecordBook, SessionRecord
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

PARALLEL = 16  # sandboxes recovered at once (each is a few engine calls and socket round trips)


async def take_over(
    book: RecordBook, backend: Backend[Any], sessions: SessionManager, processes: ProcessManager, enabled: bool
) -> list[str]:
    """Claim and recover dead daemons' sessions (when ``enabled``), then remove their orphans;
    returns the ids of the sessions taken over."""
    started = time.monotonic()
    lock = adoption_lock(book.data_dir)
    await anyio.to_thread.run_sync(lock.__enter__)
    try:
        claimed = await anyio.to_thread.run_sync(book.claim_dead) if enabled else []
        recovered: list[str] = []
        limiter = anyio.CapacityLimiter(PARALLEL)

        async def one(record: SessionRecord) -> None:
            async with limiter:
                if await _recover(record, book, backend, sessions, processes):
                    recovered.append(record.session_id)

        async with anyio.create_task_group() as tg:
            for record in claimed:
                tg.start_soon(one, record)
        if not enabled:
            await anyio.to_thread.run_sync(book.drop_dead)
        spare = await anyio.to_thread.run_sync(book.claimed_sandboxes)
        removed = await backend.cleanup_orphans(spare)
    finally:
        lock.__exit__(None, None, None)
    if claimed:
        log.info(
            "took over %d of %d sessions left by dead daemons in %.2f s%s",
            len(recovered),
            len(claimed),
            time.monotonic() - started,
            f": {', '.join(sorted(recovered))}" if len(recovered) <= 20 else "",
        )
    if removed:
        log.info("removed %d sandboxes left by dead daemons: %s", len(removed), ", ".join(removed))
    return recovered


async def _recover(
    record: SessionRecord, book: RecordBook, backend: Backend[Any], sessions: SessionManager, processes: ProcessManager
) -> bool:
    sid = record.session_id
    try:
        spec = BoxSpec.model_validate(record.spec)
    except pydantic.ValidationError as exc:
        log.warning("session %s cannot be taken over: its spec is no longer valid (%d errors)", sid, exc.error_count())
        book.remove(record.key)
        return False
    if record.backend != backend.name:
        log.warning(
            "session %s cannot be taken over: it ran on %s, this daemon on %s", sid, record.backend, backend.name
        )
        book.remove(record.key)
        return False
    try:
        handle = await backend.recover(spec, record.key, record.sandbox)
    except Exception:
        log.exception("session %s: taking over its sandbox failed", sid)
        handle = None
    if handle is None:
        log.warning("session %s is not taken over: its sandbox is gone (the workspace is kept)", sid)
        book.remove(record.key)
        return False
    session = Session(
        spec=spec,
        backend=backend,
        handle=handle,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        expires_at=record.expires_at,
    )
    sessions.adopt(session)
    for kept in record.processes:
        try:
            process = await backend.recover_process(handle, kept.ref, kept.pid)
        except Exception:
            log.exception("session %s: taking over managed process %s failed", sid, kept.process_id)
            process = None
        if process is None:
            log.warning("session %s: managed process %s is gone", sid, kept.process_id)
            continue
        processes.adopt(session, ManagedProcess.recovered(sid, kept, process))
    try:
        strays = await backend.end_strays(handle, [p.ref for p in session.processes.values() if p.ref])
    except Exception:
        log.exception("session %s: ending processes nobody can reach failed", sid)
        strays = []
    if strays:
        log.info("session %s: ended %d processes no record names", sid, len(strays))
    sessions.save(session)  # the sandbox's description may have changed (its state dir moved)
    log.info(
        "session %s taken over (%s %s, %d managed processes)",
        sid,
        handle.backend,
        handle.sandbox_id,
        len(session.processes),
    )
    return True
