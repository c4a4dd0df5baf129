"""One SQLite file, used from async code through a worker thread, with group commit.

Every operation is a function of the connection, run inside a transaction. Operations that
arrive while another batch is being written wait for it and are then written together: one
``COMMIT`` (one fsync with ``synchronous=FULL``) for the whole batch. Each operation runs under
its own savepoint, so one that raises is rolled back alone and only its caller sees the error.

A caller returns only after its batch is committed: "stored" means "on disk". A caller that is
cancelled while its operation waits is taken out of the queue; once a batch has taken it, it is
written anyway (the batch is not interrupted) and the cancellation applies afterwards.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]


class _Job(Generic[T]):
    __slots__ = ("done", "error", "operation", "result", "taken")

    def __init__(self, operation: Operation[T]) -> None:
        self.operation = operation
        self.taken = False
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class Database:
    def __init__(self, path: Path, *, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._mutex = threading.Lock()  # the queue, between the event loop and the writer thread
        self._turn = anyio.Lock()  # one batch at a time
        self.batches = 0  # commits, for diagnostics
        self.operations = 0

    async def open(self, schema: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await anyio.to_thread.run_sync(self._connect, schema)

    def _connect(self, schema: str) -> sqlite3.Connection:
        # The connection moves between worker threads; _turn guarantees one user at a time.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(schema)
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._turn:
                await anyio.to_thread.run_sync(conn.close)

    async def run(self, operation: Operation[T]) -> T:
        """Run ``operation`` in a transaction; return once it is committed."""
        job: _Job[T] = _Job(operation)
        with self._mutex:
            self._queue.append(job)
        try:
            async with self._turn:
                if not job.done:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._write_batch)
        except BaseException:
            with self._mutex:
                if not job.taken:
                    self._queue.remove(job)
            raise
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _write_batch(self) -> None:
        conn = self._conn
        with self._mutex:
            jobs = list(self._queue)
            self._queue.clear()
            for job in jobs:
                job.taken = True
        if not jobs:
            return
        if conn is None:
            for job in jobs:
                job.error, job.done = RuntimeError("the gateway database is closed"), True
            return
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
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in jobs:
                job.error = job.error or (exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                job.result = None
        finally:
            self.batches += 1
            self.operations += len(jobs)
            for job in jobs:
                job.done = True
