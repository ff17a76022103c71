"""The outbox as the workers see it: claim, renew, release, record attempts, upkeep.

One implementation per backend over the SQL in relay/webhooks/sql.py: SQLite runs each call as
one hop into a SqliteRunner thread (like the queue's hot paths), PostgreSQL as one statement
(two for recording) on a small asyncpg pool, so a claim never waits behind a recording.

The workers' own writes (leases, attempt results) commit without waiting for the disk (SQLite
``synchronous=NORMAL`` on their connection, PostgreSQL ``synchronous_commit=off``): losing the
last of them in a power cut only means a delivery is posted again, which at-least-once allows
(the receiver sees the same ``webhook-id``). The deliveries themselves are written by the
outbox trigger in the event's transaction, as durable as the event. This keeps the outbox's
commits from taking the disk (and on SQLite the single write lock) away from SMTP acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.store.db import Database, SqliteRunner, StorageUnavailable, asyncpg_dsn
from relay.webhooks import sql
from relay.webhooks.payload import Delivery
from relay.webhooks.sender import Attempted

# Delivery states.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# The event recorded when a delivery is given up (no webhook can subscribe to it).
WEBHOOK_FAILED_EVENT = "webhook-failed"
PURGE_BATCH = 5000


@dataclass(slots=True)
class Recorded:
    """One finished attempt, to be written: the delivery's new state and the attempt row."""

    delivery: Delivery
    attempted: Attempted
    attempt: int  # this attempt's number (1 = first)
    state: str  # delivered | pending (retry) | failed (given up)
    next_attempt_at: float
    at: float  # when the attempt started (epoch seconds)

    @property
    def outcome(self) -> str:
        return {PENDING: "retry"}.get(self.state, self.state)


class OutboxStore(Protocol):
    async def claim(
        self, owner: str, until: float, now: float, share: int, rooms: dict[int, int], limit: int
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries: of each webhook in ``rooms`` at most its room,
        of any other at most ``share``."""
        ...

    async def renew(self, owner: str, ids: list[int], until: float) -> None: ...
    async def release(self, owner: str, ids: list[int]) -> int: ...
    async def lease_owners(self, prefix: str) -> list[str]: ...
    async def release_owner(self, owner: str) -> int: ...
    async def record(self, owner: str, items: list[Recorded]) -> None: ...
    async def cancel_orphans(self, now: float) -> int: ...
    async def purge(self, cutoff: float) -> int: ...
    async def backlog(self) -> tuple[int, float | None]: ...
    async def close(self) -> None: ...


def open_store(db: Database) -> OutboxStore:
    return SqliteOutbox(db) if db.is_sqlite else PostgresOutbox(db)


def _webhook_stats(items: list[Recorded]) -> list[tuple[int, float, int | None, str, bool, int]]:
    """Per webhook: (id, last attempt time, last status, last error, reset, failures) where
    ``reset`` says a success happened in this batch and ``failures`` counts the failed
    attempts after the last success (or all of them when none succeeded)."""
    by_webhook: dict[int, list[Recorded]] = {}
    for item in sorted(items, key=lambda i: i.at):
        by_webhook.setdefault(item.delivery.webhook_id, []).append(item)
    out = []
    for webhook_id, group in sorted(by_webhook.items()):
        last = group[-1]
        failures, reset = 0, False
        for item in group:
            if item.attempted.ok:
                failures, reset = 0, True
            else:
                failures += 1
        out.append(
            (webhook_id, last.at, last.attempted.status, last.attempted.error, reset, failures)
        )
    return out


def _failed_event_data(item: Recorded) -> str:
    d, a = item.delivery, item.attempted
    return json.dumps(
        {
            "WebhookID": d.webhook_id,
            "WebhookEvent": d.event,
            "WebhookMessageID": d.msg_id,
            "Attempts": item.attempt,
            "HTTPStatus": a.status,
            "Error": a.error,
        }
    )


def _attempt_row(item: Recorded) -> tuple[Any, ...]:
    a = item.attempted
    return (
        item.delivery.id,
        item.delivery.webhook_id,
        item.attempt,
        item.at,
        a.status,
        a.latency,
        item.outcome,
        a.error,
        a.response,
    )


# -- SQLite ---------------------------------------------------------------------------------------


def _sqlite_candidates(
    conn: sqlite3.Connection, now: float, share: int, rooms: dict[int, int], limit: int
) -> list[int]:
    webhook_ids = [row[0] for row in conn.execute(sql.SQLITE_ENABLED_WEBHOOKS)]
    random.shuffle(webhook_ids)
    out: list[int] = []
    for webhook_id in webhook_ids:
        room = min(rooms.get(webhook_id, share), limit - len(out))
        if room <= 0:
            if len(out) >= limit:
                break
            continue
        rows = conn.execute(sql.SQLITE_DUE, (webhook_id, now, now, room)).fetchall()
        out.extend(row[0] for row in rows)
    return out


def _sqlite_lease(
    conn: sqlite3.Connection, owner: str, until: float, now: float, ids: list[int]
) -> list[tuple[Any, ...]]:
    conn.executemany(sql.SQLITE_LEASE, [(owner, until, i, now) for i in ids])
    marks = ",".join("?" * len(ids))
    return conn.execute(sql.SQLITE_LOAD.format(marks=marks), (*ids, owner)).fetchall()


def _sqlite_record(conn: sqlite3.Connection, owner: str, items: list[Recorded]) -> None:
    now = time.time()
    conn.executemany(
        sql.SQLITE_FINISH,
        [
            (i.state, i.attempt, i.next_attempt_at, now, i.delivery.id, owner)
            for i in items
            if i.state != FAILED
        ],
    )
    for item in items:
        if item.state != FAILED:
            continue
        cur = conn.execute(
            sql.SQLITE_FINISH,
            (item.state, item.attempt, item.next_attempt_at, now, item.delivery.id, owner),
        )
        # The give-up event only if this worker still held the delivery.
        if cur.rowcount:
            d = item.delivery
            conn.execute(
                sql.SQLITE_INSERT_EVENT,
                (
                    item.at,
                    d.user_id,
                    d.domain_id,
                    d.message_id,
                    d.recipient,
                    WEBHOOK_FAILED_EVENT,
                    _failed_event_data(item),
                ),
            )
    conn.executemany(sql.SQLITE_INSERT_ATTEMPT, [_attempt_row(i) for i in items])
    conn.executemany(
        sql.SQLITE_WEBHOOK_STATS,
        [(at, st, err, reset, n, n, wid) for wid, at, st, err, reset, n in _webhook_stats(items)],
    )


def _sqlite_purge(conn: sqlite3.Connection, cutoff: float) -> int:
    params = {"cutoff": cutoff, "limit": PURGE_BATCH}
    names = {"cutoff": ":cutoff", "limit": ":limit"}
    removed = conn.execute(sql.PURGE_DELIVERIES.format(**names), params)
    attempts = conn.execute(sql.PURGE_ATTEMPTS.format(**names), params)
    return int(removed.rowcount) + int(attempts.rowcount)


def _relaxed(conn: sqlite3.Connection) -> None:
    conn.execute(sql.SQLITE_RELAXED_DURABILITY)


class SqliteOutbox:
    def __init__(self, db: Database) -> None:
        self._runner = SqliteRunner(db, "webhook-outbox")
        self._relaxed = False

    async def _write(self, fn: Any, *args: Any) -> Any:
        if not self._relaxed:
            await self._runner.read(_relaxed)
            self._relaxed = True
        return await self._runner.write(fn, *args)

    async def claim(
        self, owner: str, until: float, now: float, share: int, rooms: dict[int, int], limit: int
    ) -> list[Delivery]:
        ids = await self._runner.read(_sqlite_candidates, now, share, rooms, limit)
        if not ids:
            return []
        rows = await self._write(_sqlite_lease, owner, until, now, ids)
        return [Delivery(*row) for row in rows]

    async def renew(self, owner: str, ids: list[int], until: float) -> None:
        if ids:
            marks = ",".join("?" * len(ids))
            await self._write(
                lambda c: c.execute(sql.SQLITE_RENEW.format(marks=marks), (until, *ids, owner))
            )

    async def release(self, owner: str, ids: list[int]) -> int:
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        return int(
            await self._write(
                lambda c: c.execute(sql.SQLITE_RELEASE.format(marks=marks), (*ids, owner)).rowcount
            )
        )

    async def lease_owners(self, prefix: str) -> list[str]:
        rows = await self._runner.read(
            lambda c: c.execute(sql.SQLITE_LEASE_OWNERS, (len(prefix), prefix)).fetchall()
        )
        return [str(row[0]) for row in rows]

    async def release_owner(self, owner: str) -> int:
        return int(
            await self._write(lambda c: c.execute(sql.SQLITE_RELEASE_OWNER, (owner,)).rowcount)
        )

    async def record(self, owner: str, items: list[Recorded]) -> None:
        if items:
            await self._write(_sqlite_record, owner, items)

    async def cancel_orphans(self, now: float) -> int:
        statement = sql.CANCEL_ORPHANS.format(now="?")
        return int(await self._write(lambda c: c.execute(statement, (now,)).rowcount))

    async def purge(self, cutoff: float) -> int:
        return int(await self._write(_sqlite_purge, cutoff))

    async def backlog(self) -> tuple[int, float | None]:
        row = await self._runner.read(lambda c: c.execute(sql.BACKLOG).fetchone())
        return int(row[0] or 0), row[1]

    async def close(self) -> None:
        await self._runner.close()


# -- PostgreSQL -----------------------------------------------------------------------------------


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    rows = list(rows)
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


class PostgresOutbox:
    def __init__(self, db: Database) -> None:
        self._dsn = asyncpg_dsn(db.url)
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def _acquire(self) -> Any:
        import asyncpg

        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=3,
                        timeout=10,
                        server_settings={"synchronous_commit": "off"},
                    )
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return self._pool

    async def _run(self, fn: Any) -> Any:
        import asyncpg

        pool = await self._acquire()
        try:
            async with pool.acquire() as conn:
                return await fn(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def claim(
        self, owner: str, until: float, now: float, share: int, rooms: dict[int, int], limit: int
    ) -> list[Delivery]:
        ids, room = list(rooms), list(rooms.values())
        rows = await self._run(
            lambda c: c.fetch(sql.PG_CLAIM, owner, until, now, share, ids, room, limit)
        )
        return [Delivery(*tuple(row)) for row in rows]

    async def renew(self, owner: str, ids: list[int], until: float) -> None:
        if ids:
            await self._run(lambda c: c.execute(sql.PG_RENEW, until, ids, owner))

    async def release(self, owner: str, ids: list[int]) -> int:
        if not ids:
            return 0
        status = await self._run(lambda c: c.execute(sql.PG_RELEASE, ids, owner))
        return int(status.split()[-1])

    async def lease_owners(self, prefix: str) -> list[str]:
        rows = await self._run(lambda c: c.fetch(sql.PG_LEASE_OWNERS, prefix))
        return [str(row[0]) for row in rows]

    async def release_owner(self, owner: str) -> int:
        status = await self._run(lambda c: c.execute(sql.PG_RELEASE_OWNER, owner))
        return int(status.split()[-1])

    async def record(self, owner: str, items: list[Recorded]) -> None:
        if not items:
            return
        now = time.time()
        deliveries = _columns(
            ((i.delivery.id, i.state, i.attempt, i.next_attempt_at, now) for i in items), 5
        )
        attempts = _columns((_attempt_row(i) for i in items), 9)
        stats = _webhook_stats(items)
        webhook_ids = [s[0] for s in stats]
        failed = _columns(
            (
                (
                    i.delivery.id,
                    i.at,
                    i.delivery.user_id,
                    i.delivery.domain_id,
                    i.delivery.message_id,
                    i.delivery.recipient,
                    _failed_event_data(i),
                )
                for i in items
                if i.state == FAILED
            ),
            7,
        )

        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(sql.PG_LOCK_WEBHOOKS, webhook_ids)
                await conn.execute(
                    sql.PG_RECORD,
                    *deliveries,
                    owner,
                    *attempts,
                    *_columns(stats, 6),
                    WEBHOOK_FAILED_EVENT,
                    *failed,
                )

        await self._run(write)

    async def cancel_orphans(self, now: float) -> int:
        status = await self._run(lambda c: c.execute(sql.CANCEL_ORPHANS.format(now="$1"), now))
        return int(status.split()[-1])

    async def purge(self, cutoff: float) -> int:
        async def run(conn: Any) -> int:
            a = await conn.execute(
                sql.PURGE_DELIVERIES.format(cutoff="$1", limit="$2"), cutoff, PURGE_BATCH
            )
            b = await conn.execute(
                sql.PURGE_ATTEMPTS.format(cutoff="$1", limit="$2"), cutoff, PURGE_BATCH
            )
            return int(a.split()[-1]) + int(b.split()[-1])

        return int(await self._run(run))

    async def backlog(self) -> tuple[int, float | None]:
        row = await self._run(lambda c: c.fetchrow(sql.BACKLOG))
        return int(row[0] or 0), row[1]

    async def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None
