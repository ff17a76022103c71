"""A dedicated asyncpg connection for one hot writer or reader.

The hot paths (group commits, claims) bypass SQLAlchemy: through its pool every transaction
also paid a pre-ping round trip. Each user owns one connection, opened on first use and again
after any failure; operations take turns (asyncpg runs one at a time per connection); every
driver or network error surfaces as ``StorageUnavailable``, which callers retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.store.db import StorageUnavailable, asyncpg_dsn

T = TypeVar("T")


def _errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    )


class PgConnection:
    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._dsn = asyncpg_dsn(url)
        self._timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(connection)``; reconnect first if needed; errors -> StorageUnavailable.
        A failed or interrupted operation may leave the connection unusable: it is dropped."""
        import asyncpg

        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                return await fn(self._conn)
            except _errors() as exc:
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
