from __future__ import annotations

from sqlalchemy import Row, delete, func, insert, select, update
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


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own wildcards taken literally (ESCAPE \\)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search(
    conn: AsyncConnection, user_id: int, query: str, offset: int, limit: int
) -> tuple[int, list[Row]]:
    """One page of an account's list (newest first), and how many entries match in all."""
    s = t.suppressions
    where = [s.c.user_id == user_id]
    if query:
        where.append(s.c.email.like(like_pattern(query.lower()), escape="\\"))
    total = int(await conn.scalar(select(func.count()).select_from(s).where(*where)) or 0)
    rows = (
        await conn.execute(
            select(s)
            .where(*where)
            .order_by(s.c.created_at.desc(), s.c.id.desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return total, list(rows)
