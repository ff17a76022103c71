from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def create(conn: AsyncConnection, **values: Any) -> int:
    ts = utcnow()
    ds = t.delivery_servers
    result = await conn.execute(
        insert(ds)
        .values(created_at=ts, updated_at=ts, verification_results={}, **values)
        .returning(ds.c.id)
    )
    return int(result.scalar_one())


async def get(conn: AsyncConnection, server_id: int) -> Row | None:
    ds = t.delivery_servers
    return (await conn.execute(select(ds).where(ds.c.id == server_id))).first()


async def list_all(conn: AsyncConnection) -> list[Row]:
    ds = t.delivery_servers
    return list((await conn.execute(select(ds).order_by(ds.c.id))).all())


async def assignments(conn: AsyncConnection) -> list[Row]:
    a, g = t.delivery_server_assignments, t.user_groups
    q = (
        select(a.c.server_id, a.c.group_id, a.c.channel, g.c.name.label("group_name"))
        .join(g, g.c.id == a.c.group_id)
        .order_by(a.c.server_id, a.c.group_id, a.c.channel)
    )
    return list((await conn.execute(q)).all())


async def assign(conn: AsyncConnection, server_id: int, group_id: int, channels: list[str]) -> None:
    a = t.delivery_server_assignments
    existing = set(
        (
            await conn.execute(
                select(a.c.channel).where(a.c.server_id == server_id, a.c.group_id == group_id)
            )
        ).scalars()
    )
    new = [c for c in channels if c not in existing]
    if new:
        await conn.execute(
            insert(a), [{"server_id": server_id, "group_id": group_id, "channel": c} for c in new]
        )


async def update_fields(conn: AsyncConnection, server_id: int, **values: Any) -> int:
    ds = t.delivery_servers
    result = await conn.execute(
        update(ds).where(ds.c.id == server_id).values(updated_at=utcnow(), **values)
    )
    return int(result.rowcount or 0)


async def delete_many(conn: AsyncConnection, server_ids: list[int]) -> list[int]:
    """Delete servers and their assignments; the ids that existed."""
    ds, a = t.delivery_servers, t.delivery_server_assignments
    found = list((await conn.execute(select(ds.c.id).where(ds.c.id.in_(server_ids)))).scalars())
    if found:
        await conn.execute(delete(a).where(a.c.server_id.in_(found)))
        await conn.execute(delete(ds).where(ds.c.id.in_(found)))
    return found


async def unassign(
    conn: AsyncConnection, server_id: int, group_id: int, channels: list[str] | None
) -> int:
    """Remove a group's assignment (all channels, or the given ones); rows removed."""
    a = t.delivery_server_assignments
    q = delete(a).where(a.c.server_id == server_id, a.c.group_id == group_id)
    if channels is not None:
        q = q.where(a.c.channel.in_(channels))
    result = await conn.execute(q)
    return int(result.rowcount or 0)
