"""Dedicated asyncpg connections for the hot writers and readers, and for LISTEN.

The hot paths (group commits, claims) bypass SQLAlchemy: through its pool every transaction
also paid a pre-ping round trip. Each user owns one ``PgConnection``, opened on first use and
again after any failure; operations take turns (asyncpg runs one at a time per connection);
every driver or network error surfaces as ``StorageUnavailable``, which callers retry.
``connect`` is the one place a raw asyncpg connection is opened (the DSN comes from
``asyncpg_dsn``), ``errors`` the one list of what asyncpg and the network raise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.store.db import StorageUnavailable, asyncpg_dsn

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0


def errors() -> tuple[type[BaseException], ...]:
    """What a connection or a statement raises when the database or the network fails."""
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )


async def connect(url: str, *, name: str = "", timeout: float = CONNECT_TIMEOUT) -> Any:
    """A new asyncpg connection to our SQLAlchemy URL; ``name`` shows in pg_stat_activity."""
    import asyncpg

    # No JIT: these connections run the queue's short statements over unnest() arrays, whose
    # estimates grow with the batch; compiling one took longer than running it (600 ms of a
    # 1 s feedback batch of 8,000 items).
    settings = {"jit": "off"}
    if name:
        settings["application_name"] = f"relay {name}"[:63]
    return await asyncpg.connect(asyncpg_dsn(url), timeout=timeout, server_settings=settings)


class PgConnection:
    def __init__(
        self, url: str, *, name: str = "", connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self._url = url
        self._name = name
        self._timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(connection)``; reconnect first if needed; errors -> StorageUnavailable.
        A failed or interrupted operation may leave the connection unusable: it is dropped."""
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self._url, name=self._name, timeout=self._timeout)
                return await fn(self._conn)
            except errors() as exc:
                await self._drop()
                raise StorageUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples to per-column lists (the arguments of ``unnest``)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]
