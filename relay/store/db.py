"""The database handle shared by every repository: one async engine, two real backends.

SQLite (aiosqlite) is the embedded default: WAL, synchronous=FULL. SQLite has a single writer;
rather than let concurrent writers collide and poll in SQLite's busy handler, writes in this
process queue on an asyncio lock and open with BEGIN IMMEDIATE. Reads never take the lock.
PostgreSQL (asyncpg) is production: plain transactions, row locks, SKIP LOCKED claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from relay.store import rollups

T = TypeVar("T")


class StorageUnavailable(Exception):
    """The database cannot be reached or refused the write. SMTP answers 451 4.3.0."""


def storable_text(value: str | None) -> str | None:
    """Text from the network (header values, remote SMTP replies) as both databases take it:
    undecodable bytes (kept as surrogate escapes by our parsers and aiosmtplib) become U+FFFD,
    NUL characters (refused by PostgreSQL text) are dropped."""
    if value is None:
        return None
    if value.isascii():
        return value.replace("\x00", "")
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def sqlite_datetime(value: dt.datetime) -> str:
    """A DateTime as SQLAlchemy stores it in SQLite, for rows written by raw SQL."""
    return value.isoformat(sep=" ", timespec="microseconds")


def utcnow() -> dt.datetime:
    """Naive UTC, second precision: what the documents print as 'YYYY-MM-DD HH:MM:SS'."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def now() -> float:
    return time.time()


def fmt_dt(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, echo: bool = False, process_lock: bool = False
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()  # "sqlite" | "postgresql"
        self.is_sqlite = self.dialect == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # With several processes on one SQLite file, writers also queue on an flock(2) of a
        # side file: the kernel wakes the next writer at once, where SQLite's busy handler
        # would poll with sleeps of 1 to 100 ms.
        self.process_lock: ProcessLock | None = None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            if process_lock and parsed.database:
                self.process_lock = ProcessLock(parsed.database + "-writer.lock")

    @property
    def write_lock(self) -> asyncio.Lock | None:
        """Held by every writer of this process on SQLite (None on PostgreSQL)."""
        return self._write_lock

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed on normal exit."""
        if self._write_lock is not None:
            async with self._write_lock, self.engine.connect() as conn:
                if self.process_lock is not None:
                    await self.process_lock.acquire()
                try:
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                    try:
                        yield conn
                        await rollups.fold_sqlite_async(conn)
                    except BaseException:
                        await conn.exec_driver_sql("ROLLBACK")
                        raise
                    await conn.exec_driver_sql("COMMIT")
                finally:
                    if self.process_lock is not None:
                        self.process_lock.release()
        else:
            async with self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (one snapshot per statement on SQLite's autocommit)."""
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def close(self) -> None:
        await self.engine.dispose()
        if self.process_lock is not None:
            self.process_lock.close()


class ProcessLock:
    """An exclusive flock(2) on a side file, shared by every writer process of one SQLite file.
    Taken after this process's asyncio write lock, released before it: always that order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire_blocking(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    async def acquire(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(self.acquire_blocking)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class SqliteRunner:
    """A dedicated thread and sqlite3 connection for the hot writers (group commit, delivery
    claims and outcomes). A transaction is one hand-off to the thread: under load every
    ``await`` costs a full event-loop iteration, and holding SQLite's single write lock across
    many of them (as an aiosqlite transaction does) makes every other writer wait. The fsync
    at COMMIT runs without the GIL. The hand-off is a SimpleQueue and one
    call_soon_threadsafe, lighter than concurrent.futures' per-job machinery.

    Errors of sqlite3 and of the file (a locked or read-only database, a full disk) come back
    as ``StorageUnavailable``, as PostgreSQL's do from ``relay.store.pg.PgConnection``.

    ``write`` takes this process's asyncio write lock (shared with ``Database.write``), then,
    in the thread, the cross-process lock when there is one: always in that order.
    """

    def __init__(self, db: Database, name: str) -> None:
        self._path = make_url(db.url).database or ""
        self._lock = db.write_lock
        self._process_lock = db.process_lock
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                if self._conn is not None:
                    self._conn.close()
                return
            fn, fut = job
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except (sqlite3.Error, OSError) as exc:
                outcome = (None, self._unavailable(exc))
            except BaseException as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                fut.get_loop().call_soon_threadsafe(_settle, fut, outcome)

    def _unavailable(self, exc: sqlite3.Error | OSError) -> StorageUnavailable:
        """Storage errors the way PgConnection reports them, so callers treat both backends
        alike (a claim that meets a locked or read-only file is retried, not fatal). After
        anything but a refused row the connection may be unusable: the next job reopens it."""
        if not isinstance(exc, sqlite3.IntegrityError) and self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        error = StorageUnavailable(f"SQLite: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    async def _submit(self, fn: Callable[[], T]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, fut))
        return await fut

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite_connect(self._path)
        return self._conn

    def _transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._connection()
        if self._process_lock is not None:
            self._process_lock.acquire_blocking()  # in the runner's thread: blocking is fine
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
                rollups.fold_sqlite(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return result
        finally:
            if self._process_lock is not None:
                self._process_lock.release()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction."""
        assert self._lock is not None
        async with self._lock:
            return await self._submit(lambda: self._transaction(fn, args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` outside any transaction (WAL readers never wait)."""
        return await self._submit(lambda: fn(self._connection(), *args))

    async def close(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join, 10)


def _settle(fut: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    if fut.done():
        return
    value, exc = outcome
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: the WAL is fsynced at every commit, so a 250 reply survives power loss.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    # The rollups' scratch table and GROUP BY's sorters (relay/store/rollups.py): small, and
    # never worth a temporary file.
    "PRAGMA temp_store=MEMORY",
)


def sqlite_connect(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection with the same settings as the engine's (autocommit driver:
    the caller issues BEGIN/COMMIT)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=True)
    for pragma in SQLITE_PRAGMAS:
        conn.execute(pragma)
    return conn


def asyncpg_dsn(url: str) -> str:
    """The libpq-style DSN asyncpg takes, from our SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Driver autocommit: we issue BEGIN/COMMIT ourselves (see Database.write), which is the
        # documented way to get correct transactional behaviour from pysqlite/aiosqlite.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cur.execute(pragma)
        cur.close()
