"""The database handle shared by every repository: one async engine, two real backends.

SQLite (aiosqlite) is the embedded default: WAL, synchronous=FULL. SQLite has a single writer;
rather than let concurrent writers collide and poll in SQLite's busy handler, writes in this
process queue on an asyncio lock and open with BEGIN IMMEDIATE. Reads never take the lock.
PostgreSQL (asyncpg) is production: plain transactions, row locks, SKIP LOCKED claims.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


class StorageUnavailable(Exception):
    """The database cannot be reached or refused the write. SMTP answers 451 4.3.0."""


def utcnow() -> dt.datetime:
    """Naive UTC, second precision: what the documents print as 'YYYY-MM-DD HH:MM:SS'."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def now() -> float:
    return time.time()


def fmt_dt(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
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
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @property
    def write_lock(self) -> asyncio.Lock | None:
        """Held by every writer of this process on SQLite (None on PostgreSQL)."""
        return self._write_lock

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed on normal exit."""
        if self._write_lock is not None:
            async with self._write_lock, self.engine.connect() as conn:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await conn.exec_driver_sql("ROLLBACK")
                    raise
                await conn.exec_driver_sql("COMMIT")
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


SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # FULL: the WAL is fsynced at every commit, so a 250 reply survives power loss.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
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
