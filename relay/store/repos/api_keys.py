"""Sender-domain API keys (the public v1 routes' Bearer tokens), stored hashed."""

from __future__ import annotations

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def create(
    conn: AsyncConnection,
    *,
    user_id: int,
    domain_id: int,
    description: str,
    key_hash: str,
    key_hint: str,
) -> Row:
    k = t.api_keys
    result = await conn.execute(
        insert(k)
        .values(
            user_id=user_id,
            domain_id=domain_id,
            description=description,
            key_hash=key_hash,
            key_hint=key_hint,
            status="Enabled",
            options={},
            created_at=utcnow(),
        )
        .returning(k)
    )
    return result.one()


async def lock_owned_domain(conn: AsyncConnection, domain_id: int, user_id: int) -> bool:
    """Whether the live domain is the user's; on PostgreSQL its row stays locked (FOR UPDATE)
    until the transaction ends, so a concurrent delete cannot slip between check and write.
    SQLite's writer lock (BEGIN IMMEDIATE) already excludes every other writer."""
    d = t.gateway_domains
    q = (
        select(d.c.id)
        .where(d.c.id == domain_id, d.c.user_id == user_id, d.c.status != "Deleted")
        .with_for_update()
    )
    return (await conn.scalar(q)) is not None


async def list_for_domain(conn: AsyncConnection, domain_id: int) -> list[Row]:
    k = t.api_keys
    q = select(k).where(k.c.domain_id == domain_id, k.c.status == "Enabled").order_by(k.c.id)
    return list((await conn.execute(q)).all())


async def get_owned(conn: AsyncConnection, key_id: int, user_id: int) -> Row | None:
    """An Enabled key of a live domain owned by ``user_id``."""
    k, d = t.api_keys, t.gateway_domains
    q = (
        select(k)
        .join(d, d.c.id == k.c.domain_id)
        .where(
            k.c.id == key_id,
            k.c.user_id == user_id,
            k.c.status == "Enabled",
            d.c.status != "Deleted",
        )
    )
    return (await conn.execute(q)).first()


async def disable(conn: AsyncConnection, key_id: int) -> None:
    k = t.api_keys
    await conn.execute(update(k).where(k.c.id == key_id).values(status="Deleted"))


async def delete_slot(conn: AsyncConnection, user_id: int, domain_id: int) -> int:
    """Hard-delete every key row of the (user, domain) slot, whatever its status."""
    k = t.api_keys
    result = await conn.execute(delete(k).where(k.c.user_id == user_id, k.c.domain_id == domain_id))
    return int(result.rowcount or 0)
