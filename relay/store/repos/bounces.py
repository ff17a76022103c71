"""SQL of the return path and the MX listener: the shared VERP secret, stored reports, and the
recipients of a message a report names."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t


async def recipients_of(conn: AsyncConnection, message_id: str) -> list[str]:
    """The envelope recipients of a queued message (none when it is unknown)."""
    r = t.recipients
    rows = await conn.execute(select(r.c.rcpt).where(r.c.message_id == message_id))
    return [str(row.rcpt) for row in rows]


async def store_report(conn: AsyncConnection, **values: Any) -> int:
    """One row of mx_reports (columns as in schema.mx_reports); returns its id."""
    m = t.mx_reports
    result = await conn.execute(insert(m).values(**values).returning(m.c.id))
    return int(result.scalar_one())


async def prune_reports(conn: AsyncConnection, before: float, keep: int) -> int:
    """Delete reports older than ``before`` and all but the newest ``keep``; how many went."""
    m = t.mx_reports
    gone = (await conn.execute(delete(m).where(m.c.created_at < before))).rowcount or 0
    newest_dropped = await conn.scalar(select(m.c.id).order_by(m.c.id.desc()).offset(keep).limit(1))
    if newest_dropped is not None:
        gone += (await conn.execute(delete(m).where(m.c.id <= newest_dropped))).rowcount or 0
    return int(gone)


async def count_reports(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(t.mx_reports)) or 0)
