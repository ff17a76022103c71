"""The statements of the storage probe (relay.health): one tiny write, one queue-age read."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.queue.model import PENDING_STATES
from relay.store import schema as t

# A real write that changes nothing: the row is rewritten (WAL frame on SQLite, a new tuple
# and WAL record on PostgreSQL), so a database that cannot write fails it.
_TOUCH = text("UPDATE alembic_version SET version_num = version_num")


async def touch(conn: AsyncConnection) -> None:
    await conn.execute(_TOUCH)


async def oldest_pending_created_at(conn: AsyncConnection) -> float | None:
    """When the oldest recipient still waiting for delivery (queued or deferred) was
    accepted; None when nothing waits."""
    r = t.recipients
    value = await conn.scalar(select(func.min(r.c.created_at)).where(r.c.state.in_(PENDING_STATES)))
    return float(value) if value is not None else None
