from __future__ import annotations

from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def group_exists(conn: AsyncConnection, group_id: int) -> bool:
    g = t.user_groups
    return (await conn.scalar(select(g.c.id).where(g.c.id == group_id))) is not None


async def email_taken(conn: AsyncConnection, email: str, except_id: int | None = None) -> bool:
    u = t.users
    q = select(u.c.id).where(u.c.email == email, u.c.status != "Deleted")
    if except_id is not None:
        q = q.where(u.c.id != except_id)
    return (await conn.scalar(q)) is not None


async def create(conn: AsyncConnection, **values: Any) -> int:
    ts = utcnow()
    result = await conn.execute(
        insert(t.users).values(created_at=ts, updated_at=ts, **values).returning(t.users.c.id)
    )
    return int(result.scalar_one())


async def get(conn: AsyncConnection, user_id: int) -> Row | None:
    u = t.users
    return (await conn.execute(select(u).where(u.c.id == user_id, u.c.status != "Deleted"))).first()


async def update_fields(conn: AsyncConnection, user_id: int, **values: Any) -> None:
    await conn.execute(
        update(t.users).where(t.users.c.id == user_id).values(updated_at=utcnow(), **values)
    )


async def sender_domain_limit(conn: AsyncConnection, user_id: int) -> int:
    """The user's maximum number of sender domains (own override, else the group's; 0 =
    unlimited), read with the user's row locked so concurrent adds on PostgreSQL queue up
    behind this transaction instead of both passing the count. (SQLite writes are serialized.)"""
    u, g = t.users, t.user_groups
    row = (
        await conn.execute(
            select(u.c.max_sender_domains, g.c.max_sender_domains.label("group_max"))
            .join(g, g.c.id == u.c.group_id)
            .where(u.c.id == user_id)
            .with_for_update(of=u)
        )
    ).first()
    if row is None:
        return 0
    return int(row.max_sender_domains if row.max_sender_domains is not None else row.group_max)
