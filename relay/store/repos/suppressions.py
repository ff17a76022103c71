from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def upsert(
    conn: AsyncConnection, user_id: int, email: str, reason: str, source: str = "manual"
) -> None:
    """Add an entry, or refresh the reason of an existing one (adding twice is not an error)."""
    s = t.suppressions
    existing = await conn.scalar(select(s.c.id).where(s.c.user_id == user_id, s.c.email == email))
    if existing is None:
        await conn.execute(
            insert(s).values(
                user_id=user_id, email=email, reason=reason, source=source, created_at=utcnow()
            )
        )
    else:
        await conn.execute(update(s).where(s.c.id == existing).values(reason=reason, source=source))


async def remove(conn: AsyncConnection, user_id: int, email: str) -> bool:
    s = t.suppressions
    result = await conn.execute(delete(s).where(s.c.user_id == user_id, s.c.email == email))
    return result.rowcount > 0
