"""emailgateway.smtprelay's idempotency keys: the idempotency_keys table.

A key is claimed by inserting its row; the primary key (user_id, key) decides between
concurrent calls. The row names the queue id the claiming call submits under, and is completed
once that message is committed.
"""

from __future__ import annotations

from sqlalchemy import Row, delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t

k = t.idempotency_keys


async def find(conn: AsyncConnection, user_id: int, key: str, since: float) -> Row | None:
    """The key's row, if claimed since ``since``."""
    q = select(k).where(k.c.user_id == user_id, k.c.key == key, k.c.created_at >= since)
    return (await conn.execute(q)).first()


async def claim(
    conn: AsyncConnection, user_id: int, key: str, queue_id: str, now: float, since: float
) -> bool:
    """Claim the key for ``queue_id``: True if this call inserted it. A row older than
    ``since`` has expired and is replaced."""
    await conn.execute(
        delete(k).where(k.c.user_id == user_id, k.c.key == key, k.c.created_at < since)
    )
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        dialect_insert(k)
        .values(user_id=user_id, key=key, queue_id=queue_id, created_at=now)
        .on_conflict_do_nothing(index_elements=[k.c.user_id, k.c.key])
        .returning(k.c.queue_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def take_over(
    conn: AsyncConnection, user_id: int, key: str, old_queue_id: str, queue_id: str, now: float
) -> bool:
    """An abandoned claim (still not completed, under ``old_queue_id``) for this call."""
    result = await conn.execute(
        update(k)
        .where(
            k.c.user_id == user_id,
            k.c.key == key,
            k.c.queue_id == old_queue_id,
            k.c.completed_at.is_(None),
        )
        .values(queue_id=queue_id, created_at=now)
    )
    return result.rowcount == 1


async def complete(
    conn: AsyncConnection, user_id: int, key: str, queue_id: str, now: float
) -> None:
    await conn.execute(
        update(k)
        .where(k.c.user_id == user_id, k.c.key == key, k.c.queue_id == queue_id)
        .values(completed_at=now)
    )


async def release(conn: AsyncConnection, user_id: int, key: str, queue_id: str) -> None:
    """Give up a claim whose message was not committed, so that a retry may go ahead."""
    await conn.execute(
        delete(k).where(
            k.c.user_id == user_id,
            k.c.key == key,
            k.c.queue_id == queue_id,
            k.c.completed_at.is_(None),
        )
    )


async def message_committed(conn: AsyncConnection, queue_id: str) -> bool:
    m = t.messages
    return bool(await conn.scalar(select(exists().where(m.c.id == queue_id))))


async def purge(conn: AsyncConnection, before: float) -> int:
    result = await conn.execute(delete(k).where(k.c.created_at < before))
    return result.rowcount
