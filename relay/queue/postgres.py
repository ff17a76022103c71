"""The queue on PostgreSQL: each operation is one statement on a dedicated asyncpg connection.

Data-modifying CTEs over ``unnest`` arrays put a whole batch in one round trip (relay/queue/
sql.py); the group commit carries the ``pg_notify`` that wakes every node's delivery workers,
and claims use ``FOR UPDATE SKIP LOCKED`` so nodes claim at once without overlapping. Outcomes
are the one two-statement transaction (see sql.PG_OUTCOMES). Wake-ups arrive on a second,
LISTEN-only connection that reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from relay.queue import rows, sql
from relay.queue.model import (
    ClaimedRecipient,
    DeliveryOutcome,
    FeedbackRow,
    NewEvent,
    NewMessage,
    QueueDepth,
    QueuedMessage,
    Recorded,
)
from relay.store.db import Database, utcnow
from relay.store.pg import PgConnection, columns, connect, errors

log = structlog.get_logger("relay.queue")

LISTEN_BACKOFF = (0.5, 30.0)  # first and longest wait before reconnecting LISTEN


class PostgresQueue:
    """``QueueBackend`` on PostgreSQL (see relay/queue/backend.py)."""

    def __init__(self, db: Database, name: str) -> None:
        self._url = db.url
        self._name = name
        self._pg = PgConnection(db.url, name=name)

    async def ingest(self, messages: Sequence[NewMessage], events: Sequence[NewEvent]) -> None:
        m, r, e = rows.ingest(messages, events, time.time())
        args = [*columns(m, 15), *columns(r, 6), *columns(e, 9)]
        await self._pg.run(lambda conn: conn.execute(sql.PG_INGEST, *args))

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedRecipient]:
        now = time.time() if now is None else now
        until = now + lease_seconds
        found = await self._pg.run(lambda c: c.fetch(sql.PG_CLAIM, owner, until, now, limit))
        return sorted(map(rows.claimed, found), key=lambda c: c.id)

    async def load(self, claimed: Iterable[ClaimedRecipient]) -> list[QueuedMessage]:
        grouped = rows.by_message(list(claimed))
        if not grouped:
            return []
        ids = list(grouped)
        return rows.loaded(await self._pg.run(lambda c: c.fetch(sql.PG_LOAD, ids)), grouped)

    async def record_outcomes(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        if not outcomes:
            return
        updates, suppress, event_rows, finished = rows.outcomes(outcomes, time.time())
        args = [*columns(updates, 7), *columns(suppress, 4), utcnow(), *columns(event_rows, 9)]

        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(sql.PG_OUTCOMES, *args)
                if finished:
                    await conn.execute(sql.PG_DROP_BODIES, finished)

        await self._pg.run(write)

    async def release(self, owner: str, ids: Iterable[int] | None = None) -> int:
        if ids is None:
            status = await self._pg.run(lambda c: c.execute(sql.PG_RELEASE, owner))
        else:
            id_list = list(ids)
            if not id_list:
                return 0
            status = await self._pg.run(lambda c: c.execute(sql.PG_RELEASE_IDS, owner, id_list))
        return int(status.rsplit(" ", 1)[1])  # "UPDATE <count>"

    async def renew(self, owner: str, ids: Iterable[int], until: float) -> int:
        id_list = list(ids)
        if not id_list:
            return 0
        status = await self._pg.run(lambda c: c.execute(sql.PG_RENEW, owner, id_list, until))
        return int(status.rsplit(" ", 1)[1])

    async def lease_owners(self, prefix: str) -> list[str]:
        found = await self._pg.run(lambda c: c.fetch(sql.PG_LEASE_OWNERS, prefix))
        return [str(row[0]) for row in found]

    async def pending(self, now: float | None = None) -> QueueDepth:
        now = time.time() if now is None else now
        total, scheduled, held = await self._pg.run(lambda c: c.fetchrow(sql.PG_DEPTH, now))
        return QueueDepth(total - scheduled, scheduled, held)

    async def next_scheduled(self, now: float) -> float | None:
        due = await self._pg.run(lambda c: c.fetchval(sql.PG_NEXT_SCHEDULED, now))
        return None if due is None else float(due)

    async def record_feedback(self, feedback: Sequence[FeedbackRow]) -> list[Recorded]:
        if not feedback:
            return []
        cols = columns(list(feedback), 11)
        found = await self._pg.run(lambda c: c.fetch(sql.PG_FEEDBACK, *cols, utcnow()))
        by_ordinal: dict[int, tuple[int, str]] = {o: (uid, email) for o, uid, email in found}
        out: list[Recorded] = []
        for row in feedback:
            hit = by_ordinal.get(row[0])
            # The email counts as suppressed only for an item that asked for it.
            out.append(None if hit is None else (hit[0], hit[1] if row[7] is not None else None))
        return out

    async def listen(self, wake: Callable[[], None], listening: asyncio.Event) -> None:
        delay = LISTEN_BACKOFF[0]
        while True:
            conn: Any = None
            try:
                conn = await connect(self._url, name=f"{self._name}-listen")
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(sql.NOTIFY_CHANNEL, lambda *_args: wake())
                # Notifications sent while nobody listened are gone: look now.
                wake()
                listening.set()
                delay = LISTEN_BACKOFF[0]
                await lost.wait()
                log.warning("queue LISTEN connection lost; reconnecting")
            except errors() as exc:
                log.warning("queue LISTEN unavailable; polling meanwhile", error=repr(exc))
            finally:
                listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_BACKOFF[1])

    async def close(self) -> None:
        await self._pg.close()
