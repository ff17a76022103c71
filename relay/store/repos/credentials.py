from __future__ import annotations

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def create(
    conn: AsyncConnection, *, user_id: int, domain_id: int, username: str, password_hash: str
) -> int:
    ts = utcnow()
    c = t.smtp_credentials
    result = await conn.execute(
        insert(c)
        .values(
            user_id=user_id,
            domain_id=domain_id,
            username=username,
            password_hash=password_hash,
            status="Enabled",
            created_at=ts,
            updated_at=ts,
        )
        .returning(c.c.id)
    )
    return int(result.scalar_one())


async def list_for_domain(conn: AsyncConnection, domain_id: int) -> list[Row]:
    c = t.smtp_credentials
    q = select(c).where(c.c.domain_id == domain_id, c.c.status == "Enabled").order_by(c.c.id)
    return list((await conn.execute(q)).all())


async def get_owned(conn: AsyncConnection, credential_id: int, user_id: int) -> Row | None:
    c, d = t.smtp_credentials, t.gateway_domains
    q = (
        select(c)
        .join(d, d.c.id == c.c.domain_id)
        .where(
            c.c.id == credential_id,
            c.c.user_id == user_id,
            c.c.status == "Enabled",
            d.c.status != "Deleted",
        )
    )
    return (await conn.execute(q)).first()


async def set_password_hash(conn: AsyncConnection, credential_id: int, password_hash: str) -> None:
    c = t.smtp_credentials
    await conn.execute(
        update(c)
        .where(c.c.id == credential_id)
        .values(password_hash=password_hash, updated_at=utcnow())
    )


async def disable(conn: AsyncConnection, credential_id: int) -> None:
    """Soft delete: the username stays reserved and messages keep their reference."""
    c = t.smtp_credentials
    await conn.execute(
        update(c).where(c.c.id == credential_id).values(status="Deleted", updated_at=utcnow())
    )
