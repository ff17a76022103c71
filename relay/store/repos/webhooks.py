"""Webhook endpoints of gateway domains, their delivery history, and the domains' signing keys.

The delivery side's hot SQL (claims, attempts) is in relay/webhooks/sql.py; this is what the
admin commands and the key upkeep need.
"""

from __future__ import annotations

import time

from sqlalchemy import Row, func, insert, select, update
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
    """Delete a webhook: its pending deliveries are cancelled in the same transaction."""
    w, d = t.webhooks, t.webhook_deliveries
    await conn.execute(update(w).where(w.c.id == webhook_id).values(status="Deleted"))
    await conn.execute(
        update(d)
        .where(d.c.webhook_id == webhook_id, d.c.state == "pending")
        .values(state="cancelled", lease_owner=None, lease_until=None, updated_at=time.time())
    )


async def recent_attempts(conn: AsyncConnection, webhook_id: int, limit: int) -> list[Row]:
    """A webhook's latest attempts, newest first, with what each delivery was about."""
    a, d = t.webhook_attempts, t.webhook_deliveries
    q = (
        select(
            a.c.id,
            a.c.attempt,
            a.c.attempted_at,
            a.c.status,
            a.c.latency,
            a.c.outcome,
            a.c.error,
            a.c.response,
            d.c.msg_id,
            d.c.event,
            d.c.message_id,
            d.c.recipient,
            d.c.state,
        )
        .select_from(a.outerjoin(d, d.c.id == a.c.delivery_id))
        .where(a.c.webhook_id == webhook_id)
        .order_by(a.c.id.desc())
        .limit(limit)
    )
    return list((await conn.execute(q)).all())


async def pending_count(conn: AsyncConnection, webhook_id: int) -> int:
    d = t.webhook_deliveries
    q = select(func.count()).where(d.c.webhook_id == webhook_id, d.c.state == "pending")
    return int(await conn.scalar(q) or 0)


# -- signing keys (relay/webhooks/keys.py) ------------------------------------------------------


async def stored_key(conn: AsyncConnection, domain_id: int) -> str | None:
    d = t.gateway_domains
    value = await conn.scalar(select(d.c.signing_key).where(d.c.id == domain_id))
    return str(value) if value is not None else None


async def domain_exists(conn: AsyncConnection, domain_id: int) -> bool:
    d = t.gateway_domains
    return await conn.scalar(select(d.c.id).where(d.c.id == domain_id)) is not None


async def domains_without_key(conn: AsyncConnection) -> list[int]:
    d = t.gateway_domains
    return list((await conn.scalars(select(d.c.id).where(d.c.signing_key.is_(None)))).all())


async def set_key_if_missing(conn: AsyncConnection, domain_id: int, sealed_key: str) -> int:
    d = t.gateway_domains
    result = await conn.execute(
        update(d)
        .where(d.c.id == domain_id, d.c.signing_key.is_(None))
        .values(signing_key=sealed_key)
    )
    return int(result.rowcount or 0)


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
