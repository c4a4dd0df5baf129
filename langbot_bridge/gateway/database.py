"""One SQLite file, used from async code through a worker thread, with group commit.

Every operation is a function of the connection, run inside a transaction. Operations that
arrive while a batch is being written wait, and are then written together by one of their
callers: one ``COMMIT`` (one fsync with ``synchronous=FULL``) for the whole batch. Each
operation runs under its own savepoint, so one that raises is rolled back alone and only its
caller sees the error.

One caller at a time is the writer: it takes everything queued, writes it in the worker
thread, wakes every caller of that batch at once, and hands the role to the first caller still
waiting. A caller whose operation someone else wrote returns as soon as that batch is
committed; nobody waits in line for a lock to find out. "Stored" always means "committed".

A caller cancelled while its operation waits is taken out of the queue; once a batch has taken
it, it is written anyway (a batch is never interrupted) and the cancellation applies afterwards.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]


class _Job(Generic[T]):
    __slots__ = ("done", "error", "operation", "result", "taken", "wake")

    def __init__(self, operation: Operation[T]) -> None:
        self.operation = operation
        self.taken = False  # a batch has it: it will be written
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.wake = anyio.Event()  # set when done, or when the caller is to write the next batch


class Database:
    def __init__(self, path: Path, *, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._writing = False  # some caller holds the writer role
        self.batches = 0  # commits, for diagnostics
        self.operations = 0
        self.batch_ms: collections.deque[float] = collections.deque(maxlen=1000)  # in the thread, commit included

    async def open(self, schema: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await anyio.to_thread.run_sync(self._connect, schema)

    def _connect(self, schema: str) -> sqlite3.Connection:
        # The connection moves between worker threads; the writer role means one user at a time.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(schema)
        return conn

    async def close(self) -> None:
        await self.run(lambda conn: None)  # everything queued before this is written
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close)

    async def run(self, operation: Operation[T]) -> T:
        """Run ``operation`` in a transaction; return once it is committed."""
        job: _Job[T] = _Job(operation)
        self._queue.append(job)
        if self._writing:
            try:
                await job.wake.wait()
            except BaseException:
                if not job.taken:
                    self._queue.remove(job)
                    if job.wake.is_set():  # it had just been given the writer role: pass it on
                        self._hand_over()
                raise
        else:
            self._writing = True
        if not job.done:  # this caller writes: it came first, or it was handed the role
            await self._write(job)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def _write(self, job: _Job[Any]) -> None:
        try:
            with anyio.CancelScope(shield=True):
                while not job.done:
                    batch = list(self._queue)
                    self._queue.clear()
                    for queued in batch:
                        queued.taken = True
                    await anyio.to_thread.run_sync(self._write_batch, batch)
                    for queued in batch:
                        queued.wake.set()
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._queue:
            self._queue[0].wake.set()  # its caller writes the next batch; the role stays taken
        else:
            self._writing = False

    def _write_batch(self, jobs: list[_Job[Any]]) -> None:
        conn = self._conn
        started = time.perf_counter()
        try:
            if conn is None:
                raise RuntimeError("the gateway database is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in jobs:
                    conn.execute("SAVEPOINT op")
                    try:
                        job.result = job.operation(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        job.error = exc
                    conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # nothing of the batch was committed: every caller hears why
            for job in jobs:
                job.error, job.result = job.error or exc, None
        finally:
            self.batch_ms.append((time.perf_counter() - started) * 1000)
            self.batches += 1
            self.operations += len(jobs)
            for job in jobs:
                job.done = True
