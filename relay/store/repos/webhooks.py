"""Webhook endpoints of gateway domains, and the domains' signing keys."""

from __future__ import annotations

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def create(
    conn: AsyncConnection, *, user_id: int, domain_id: int, event: str, url: str
) -> int:
    w = t.webhooks
    result = await conn.execute(
        insert(w)
        .values(
            user_id=user_id,
            domain_id=domain_id,
            event=event,
            url=url,
            status="Enabled",
            created_at=utcnow(),
        )
        .returning(w.c.id)
    )
    return int(result.scalar_one())


async def list_for_domain(conn: AsyncConnection, domain_id: int) -> list[Row]:
    w = t.webhooks
    q = select(w).where(w.c.domain_id == domain_id, w.c.status == "Enabled").order_by(w.c.id)
    return list((await conn.execute(q)).all())


async def get_in_domain(conn: AsyncConnection, webhook_id: int, domain_id: int) -> Row | None:
    w = t.webhooks
    q = select(w).where(w.c.id == webhook_id, w.c.domain_id == domain_id, w.c.status == "Enabled")
    return (await conn.execute(q)).first()


async def disable(conn: AsyncConnection, webhook_id: int) -> None:
    w = t.webhooks
    await conn.execute(update(w).where(w.c.id == webhook_id).values(status="Deleted"))


async def set_signing_key(
    conn: AsyncConnection, domain_id: int, user_id: int, sealed_key: str
) -> int:
    """Store a domain's new signing key; the number of rows it matched (0 or 1)."""
    d = t.gateway_domains
    result = await conn.execute(
        update(d)
        .where(d.c.id == domain_id, d.c.user_id == user_id, d.c.status != "Deleted")
        .values(signing_key=sealed_key, updated_at=utcnow())
    )
    return int(result.rowcount or 0)
