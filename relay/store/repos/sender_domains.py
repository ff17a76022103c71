"""User sender domains (seed 003): the user_sender_domains table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow

s = t.user_sender_domains
LIVE = s.c.status != "Deleted"


async def list_live(conn: AsyncConnection, user_id: int) -> list[Row]:
    q = select(s).where(s.c.user_id == user_id, LIVE).order_by(s.c.id)
    return list((await conn.execute(q)).all())


async def get_live(conn: AsyncConnection, domain_id: int, user_id: int) -> Row | None:
    """A live domain of this user; another user's domain is simply not found."""
    q = select(s).where(s.c.id == domain_id, s.c.user_id == user_id, LIVE)
    return (await conn.execute(q)).first()


async def count_live_other_than(conn: AsyncConnection, user_id: int, domain: str) -> int:
    q = select(func.count()).where(s.c.user_id == user_id, LIVE, s.c.domain != domain)
    return int(await conn.scalar(q) or 0)


async def upsert(
    conn: AsyncConnection,
    *,
    user_id: int,
    domain: str,
    options: dict[str, Any],
    verification_meta: dict[str, Any],
) -> int:
    """Insert, or refresh the existing (user, domain) row (a soft-deleted one comes back) to
    Approval Pending with the new options and records: the documents' ON DUPLICATE KEY UPDATE,
    as INSERT ... ON CONFLICT on both backends."""
    ts = utcnow()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(s).values(
        user_id=user_id,
        domain=domain,
        status="Approval Pending",
        options=options,
        verification_meta=verification_meta,
        policy_meta=[],
        created_at=ts,
        updated_at=ts,
    )
    upsert_stmt = stmt.on_conflict_do_update(
        index_elements=[s.c.user_id, s.c.domain],
        set_={
            "status": "Approval Pending",
            "options": stmt.excluded.options,
            "verification_meta": stmt.excluded.verification_meta,
            "updated_at": ts,
        },
    ).returning(s.c.id)
    return int((await conn.execute(upsert_stmt)).scalar_one())


async def get_any(conn: AsyncConnection, domain_id: int) -> Row | None:
    return (await conn.execute(select(s).where(s.c.id == domain_id))).first()


async def update_fields(conn: AsyncConnection, domain_id: int, **values: Any) -> int:
    result = await conn.execute(
        update(s).where(s.c.id == domain_id, LIVE).values(updated_at=utcnow(), **values)
    )
    return result.rowcount


async def soft_delete(conn: AsyncConnection, domain_id: int, user_id: int) -> bool:
    result = await conn.execute(
        update(s)
        .where(s.c.id == domain_id, s.c.user_id == user_id, LIVE)
        .values(status="Deleted", updated_at=utcnow())
    )
    return result.rowcount == 1
