from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow

LIVE = t.gateway_domains.c.status != "Deleted"


async def count_live(conn: AsyncConnection, user_id: int) -> int:
    d = t.gateway_domains
    return int(await conn.scalar(select(func.count()).where(d.c.user_id == user_id, LIVE)) or 0)


async def find_live(conn: AsyncConnection, user_id: int, name: str) -> Row | None:
    d = t.gateway_domains
    return (
        await conn.execute(select(d).where(d.c.user_id == user_id, d.c.name == name, LIVE))
    ).first()


async def create(conn: AsyncConnection, **values: Any) -> int:
    ts = utcnow()
    d = t.gateway_domains
    result = await conn.execute(
        insert(d).values(created_at=ts, updated_at=ts, **values).returning(d.c.id)
    )
    return int(result.scalar_one())


async def get(conn: AsyncConnection, domain_id: int, user_id: int | None = None) -> Row | None:
    """A live domain by id; with user_id, only if that user owns it."""
    d = t.gateway_domains
    q = select(d).where(d.c.id == domain_id, LIVE)
    if user_id is not None:
        q = q.where(d.c.user_id == user_id)
    return (await conn.execute(q)).first()


async def update_fields(conn: AsyncConnection, domain_id: int, **values: Any) -> int:
    d = t.gateway_domains
    result = await conn.execute(
        update(d).where(d.c.id == domain_id, LIVE).values(updated_at=utcnow(), **values)
    )
    return result.rowcount
