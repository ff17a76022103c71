from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
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


def _with_group() -> Any:
    u, g = t.users, t.user_groups
    return select(
        u,
        g.c.name.label("group_name"),
        g.c.send_limit_per_hour.label("group_send_limit_per_hour"),
        g.c.max_sender_domains.label("group_max_sender_domains"),
    ).join(g, g.c.id == u.c.group_id)


async def get_with_group(conn: AsyncConnection, user_id: int) -> Row | None:
    u = t.users
    q = _with_group().where(u.c.id == user_id, u.c.status != "Deleted")
    return (await conn.execute(q)).first()


async def list_with_group(conn: AsyncConnection, group_id: int | None = None) -> list[Row]:
    u = t.users
    q = _with_group().where(u.c.status != "Deleted").order_by(u.c.id)
    if group_id is not None:
        q = q.where(u.c.group_id == group_id)
    return list((await conn.execute(q)).all())


async def find_by_email(conn: AsyncConnection, email: str) -> Row | None:
    u = t.users
    q = select(u).where(u.c.email == email, u.c.status != "Deleted")
    return (await conn.execute(q)).first()


async def ids_in_group(conn: AsyncConnection, group_id: int) -> list[int]:
    u = t.users
    q = select(u.c.id).where(u.c.group_id == group_id, u.c.status != "Deleted")
    return list((await conn.execute(q)).scalars())


async def soft_delete(conn: AsyncConnection, user_id: int) -> tuple[list[int], list[str]]:
    """Mark a user and everything that lets mail flow in their name Deleted: sender domains,
    SMTP credentials, API keys, webhooks; drop their sessions. Returns the affected domain ids
    and SMTP usernames (for cache invalidation). Rows stay so events keep their references."""
    u, d, c, k, w = t.users, t.gateway_domains, t.smtp_credentials, t.api_keys, t.webhooks
    ts = utcnow()
    domain_ids = list(
        (
            await conn.execute(
                select(d.c.id).where(d.c.user_id == user_id, d.c.status != "Deleted")
            )
        ).scalars()
    )
    usernames = list(
        (
            await conn.execute(
                select(c.c.username).where(c.c.user_id == user_id, c.c.status != "Deleted")
            )
        ).scalars()
    )
    await conn.execute(
        update(d).where(d.c.user_id == user_id).values(status="Deleted", updated_at=ts)
    )
    await conn.execute(
        update(c).where(c.c.user_id == user_id).values(status="Deleted", updated_at=ts)
    )
    await conn.execute(update(k).where(k.c.user_id == user_id).values(status="Deleted"))
    await conn.execute(update(w).where(w.c.user_id == user_id).values(status="Deleted"))
    await conn.execute(delete(t.sessions).where(t.sessions.c.user_id == user_id))
    await conn.execute(update(u).where(u.c.id == user_id).values(status="Deleted", updated_at=ts))
    return domain_ids, usernames


# -- user groups ------------------------------------------------------------------------------


async def create_group(conn: AsyncConnection, **values: Any) -> int:
    ts = utcnow()
    g = t.user_groups
    result = await conn.execute(
        insert(g).values(created_at=ts, updated_at=ts, **values).returning(g.c.id)
    )
    return int(result.scalar_one())


async def get_group(conn: AsyncConnection, group_id: int) -> Row | None:
    g = t.user_groups
    return (await conn.execute(select(g).where(g.c.id == group_id))).first()


async def update_group(conn: AsyncConnection, group_id: int, **values: Any) -> None:
    g = t.user_groups
    await conn.execute(update(g).where(g.c.id == group_id).values(updated_at=utcnow(), **values))


async def list_groups(conn: AsyncConnection) -> list[Row]:
    """Every group with the number of its (non-deleted) users."""
    g, u = t.user_groups, t.users
    users = (
        select(func.count())
        .where(u.c.group_id == g.c.id, u.c.status != "Deleted")
        .scalar_subquery()
        .label("user_count")
    )
    return list((await conn.execute(select(g, users).order_by(g.c.id))).all())


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
