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


async def enabled_elsewhere(conn: AsyncConnection, name: str, domain_id: int) -> Row | None:
    """The domain of that name Enabled for an account, if it is not ``domain_id`` (a name is
    Enabled once at most: uq_gateway_domains_name_enabled)."""
    d = t.gateway_domains
    q = select(d).where(d.c.name == name, d.c.status == "Enabled", d.c.id != domain_id)
    return (await conn.execute(q)).first()


async def demote(conn: AsyncConnection, domain_id: int, verification_meta: dict[str, Any]) -> bool:
    """An Enabled domain back to Approval Pending with these verification results; False if it
    was no longer Enabled."""
    d = t.gateway_domains
    result = await conn.execute(
        update(d)
        .where(d.c.id == domain_id, d.c.status == "Enabled")
        .values(status="Approval Pending", verification_meta=verification_meta, updated_at=utcnow())
    )
    return result.rowcount == 1


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


async def list_for_user(conn: AsyncConnection, user_id: int) -> list[Row]:
    d = t.gateway_domains
    q = select(d).where(d.c.user_id == user_id, LIVE).order_by(d.c.id)
    return list((await conn.execute(q)).all())


async def resource_counts(conn: AsyncConnection, user_id: int) -> dict[int, tuple[int, int, int]]:
    """Enabled API keys, SMTP credentials and webhooks per live domain of a user, in one
    statement: each table is grouped once and joined, instead of 3 queries per domain."""
    d = t.gateway_domains

    def enabled_per_domain(table: Any, label: str) -> Any:
        return (
            select(table.c.domain_id, func.count().label(label))
            .where(table.c.user_id == user_id, table.c.status == "Enabled")
            .group_by(table.c.domain_id)
            .subquery()
        )

    keys = enabled_per_domain(t.api_keys, "n")
    smtps = enabled_per_domain(t.smtp_credentials, "n")
    hooks = enabled_per_domain(t.webhooks, "n")
    q = (
        select(
            d.c.id,
            func.coalesce(keys.c.n, 0),
            func.coalesce(smtps.c.n, 0),
            func.coalesce(hooks.c.n, 0),
        )
        .select_from(
            d.outerjoin(keys, keys.c.domain_id == d.c.id)
            .outerjoin(smtps, smtps.c.domain_id == d.c.id)
            .outerjoin(hooks, hooks.c.domain_id == d.c.id)
        )
        .where(d.c.user_id == user_id, LIVE)
    )
    return {
        row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in (await conn.execute(q)).all()
    }


async def soft_delete(conn: AsyncConnection, domain_id: int) -> list[str]:
    """Mark a domain Deleted with its SMTP credentials and API keys; returns the credentials'
    usernames (their cached entries must be dropped)."""
    ts = utcnow()
    c, k = t.smtp_credentials, t.api_keys
    usernames = list(
        (
            await conn.execute(
                select(c.c.username).where(c.c.domain_id == domain_id, c.c.status != "Deleted")
            )
        ).scalars()
    )
    await conn.execute(
        update(c)
        .where(c.c.domain_id == domain_id, c.c.status != "Deleted")
        .values(status="Deleted", updated_at=ts)
    )
    await conn.execute(
        update(k)
        .where(k.c.domain_id == domain_id, k.c.status != "Deleted")
        .values(status="Deleted")
    )
    d = t.gateway_domains
    await conn.execute(update(d).where(d.c.id == domain_id).values(status="Deleted", updated_at=ts))
    return usernames


async def enabled(conn: AsyncConnection) -> list[Row]:
    """Name and options of every Enabled domain, for relay checks and PowerMTA lists."""
    d = t.gateway_domains
    q = select(d.c.name, d.c.options).where(d.c.status == "Enabled").order_by(d.c.name)
    return list((await conn.execute(q)).all())


async def enabled_names(conn: AsyncConnection) -> list[str]:
    d = t.gateway_domains
    return list((await conn.execute(select(d.c.name).where(d.c.status == "Enabled"))).scalars())
