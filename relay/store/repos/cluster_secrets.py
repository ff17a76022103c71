"""Secrets shared by every node (table cluster_secrets): created once, then only read."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def get(conn: AsyncConnection, name: str) -> str | None:
    """The stored value of ``name``, if there is one (a read, without the write lock)."""
    s = t.cluster_secrets
    value = await conn.scalar(select(s.c.value).where(s.c.name == name))
    return None if value is None else str(value)


async def get_or_create(conn: AsyncConnection, name: str, candidate: str) -> str:
    """The stored value of ``name``; ``candidate`` is stored first if there is none. Nodes
    starting at the same time all end up with the first value written (the insert of the
    others does nothing)."""
    s = t.cluster_secrets
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        insert(s)
        .values(name=name, value=candidate, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[s.c.name])
    )
    value = await conn.scalar(select(s.c.value).where(s.c.name == name))
    assert value is not None
    return str(value)
