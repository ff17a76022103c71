"""Login sessions (user.login): the SessionID is returned once and stored as a SHA-256 hash."""

from __future__ import annotations

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.db import utcnow


async def create(conn: AsyncConnection, *, id_hash: str, user_id: int, expires_at: float) -> None:
    await conn.execute(
        insert(t.sessions).values(
            id_hash=id_hash, user_id=user_id, expires_at=expires_at, created_at=utcnow()
        )
    )


async def purge_expired(conn: AsyncConnection, user_id: int, now: float) -> None:
    s = t.sessions
    await conn.execute(delete(s).where(s.c.user_id == user_id, s.c.expires_at <= now))
