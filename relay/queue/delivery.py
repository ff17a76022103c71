"""The delivery side of the queue store: claim due recipients, load them, record outcomes.

All of the delivery workers' SQL lives here, for both backends.

Claims are leases: a claimed recipient carries ``lease_owner`` (the node) and ``lease_until``.
Nobody else claims it before ``lease_until``; a crashed node's leases simply expire and the
recipients are claimed again (at-least-once delivery). On PostgreSQL the claim is one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``, so several nodes
claim at once without waiting on each other or overlapping. SQLite has a single writer
(``Database.write`` serializes), and the same statement without the lock clause does the job.

The pending-state predicate is written as a literal (not bound parameters) so that both
planners can match it to the partial index ``ix_recipients_due``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, text, update

from relay import events
from relay.cache import LocalBus
from relay.directory import Topics
from relay.queue.model import (
    FINAL_STATES,
    ClaimedRecipient,
    DeliveryOutcome,
    QueuedMessage,
)
from relay.store import schema as t
from relay.store.db import (
    Database,
    SqliteRunner,
    StorageUnavailable,
    asyncpg_dsn,
    sqlite_datetime,
    storable_text,
    utcnow,
)
from relay.store.repos import suppressions

r = t.recipients
m = t.messages

PENDING = text("recipients.state IN ('queued', 'deferred')")

# -- SQLite: the same statements as raw SQL, run as one SqliteRunner call each ----------------
# (see relay/store/db.py: an aiosqlite transaction holds SQLite's only write lock across ~15
# event-loop iterations, and the SMTP group commit would queue behind it).

SQLITE_CLAIM = """
UPDATE recipients SET lease_owner = ?, lease_until = ?
WHERE id IN (
    SELECT id FROM recipients
    WHERE recipients.state IN ('queued', 'deferred') AND next_attempt_at <= ?
      AND (lease_until IS NULL OR lease_until < ?)
    ORDER BY next_attempt_at, id LIMIT ?)
RETURNING id, message_id, rcpt, rcpt_domain, attempts, created_at
"""
SQLITE_LOAD = """
SELECT id, user_id, domain_id, mail_from, header_from, subject, body, created_at
FROM messages WHERE id IN ({marks})
"""
SQLITE_OUTCOME = """
UPDATE recipients SET state = ?2, attempts = ?3, next_attempt_at = ?4, last_code = ?5,
    last_response = ?6, lease_owner = NULL, lease_until = NULL, updated_at = ?7
WHERE id = ?1 AND recipients.state IN ('queued', 'deferred')
"""
SQLITE_SUPPRESS = """
INSERT INTO suppressions (user_id, email, reason, source, created_at) VALUES (?, ?, ?, 'bounce', ?)
ON CONFLICT (user_id, email) DO UPDATE SET reason = excluded.reason, source = excluded.source
"""
SQLITE_EVENT = """
INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
    smtp_response, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQLITE_DROP_BODIES = """
UPDATE messages SET body = NULL
WHERE id IN ({marks}) AND body IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM recipients
    WHERE recipients.message_id = messages.id AND recipients.state IN ('queued', 'deferred'))
"""


def _sqlite_claim(
    conn: sqlite3.Connection, owner: str, until: float, now: float, limit: int
) -> list[tuple[Any, ...]]:
    return conn.execute(SQLITE_CLAIM, (owner, until, now, now, limit)).fetchall()


def _sqlite_load(conn: sqlite3.Connection, ids: list[str]) -> list[tuple[Any, ...]]:
    marks = ",".join("?" * len(ids))
    return conn.execute(SQLITE_LOAD.format(marks=marks), ids).fetchall()


def _sqlite_outcomes(
    conn: sqlite3.Connection,
    updates: list[tuple[Any, ...]],
    suppress: list[tuple[Any, ...]],
    event_rows: list[tuple[Any, ...]],
    finished: list[str],
    created: str,
) -> None:
    conn.executemany(SQLITE_OUTCOME, updates)
    if suppress:
        conn.executemany(SQLITE_SUPPRESS, [(*row, created) for row in suppress])
    conn.executemany(SQLITE_EVENT, event_rows)
    if finished:
        marks = ",".join("?" * len(finished))
        conn.execute(SQLITE_DROP_BODIES.format(marks=marks), finished)


# -- PostgreSQL: the same, on a dedicated asyncpg connection --------------------------------
# (through SQLAlchemy every transaction also paid a pool pre-ping round trip, and its
# statement layer cost a third of a delivery process's time.)

PG_CLAIM = """
UPDATE recipients SET lease_owner = $1, lease_until = $2
WHERE id IN (
    SELECT id FROM recipients
    WHERE recipients.state IN ('queued', 'deferred') AND next_attempt_at <= $3
      AND (lease_until IS NULL OR lease_until < $3)
    ORDER BY next_attempt_at, id LIMIT $4
    FOR UPDATE SKIP LOCKED)
RETURNING id, message_id, rcpt, rcpt_domain, attempts, created_at
"""
PG_LOAD = """
SELECT id, user_id, domain_id, mail_from, header_from, subject, body, created_at
FROM messages WHERE id = ANY($1::text[])
"""
# Recipients, suppressions and events in one statement. The body drop is a second statement:
# every sub-statement of a WITH query sees the snapshot from before the query, so it would not
# see the recipients this one just finalized.
PG_OUTCOMES = """
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::int[],
        $6::text[], $7::float8[]) AS o(id, state, attempts, nxt, code, resp, upd)
), u AS (
    UPDATE recipients SET state = o.state, attempts = o.attempts, next_attempt_at = o.nxt,
        last_code = o.code, last_response = o.resp, lease_owner = NULL, lease_until = NULL,
        updated_at = o.upd
    FROM o WHERE recipients.id = o.id AND recipients.state IN ('queued', 'deferred')
    RETURNING recipients.id
), s AS (
    INSERT INTO suppressions (user_id, email, reason, source, created_at)
    SELECT uid, email, reason, 'bounce', $11::timestamp
    FROM unnest($8::int[], $9::text[], $10::text[]) AS x(uid, email, reason)
    ON CONFLICT (user_id, email) DO UPDATE SET reason = excluded.reason, source = excluded.source
)
INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
    smtp_response, data)
SELECT * FROM unnest($12::float8[], $13::int[], $14::int[], $15::text[], $16::text[],
    $17::text[], $18::int[], $19::text[], $20::json[])
"""
PG_DROP_BODIES = """
UPDATE messages SET body = NULL
WHERE id = ANY($1::text[]) AND body IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM recipients
    WHERE recipients.message_id = messages.id AND recipients.state IN ('queued', 'deferred'))
"""


class _PgDelivery:
    """One connection shared by the claim loop and the outcome recorder; asyncpg runs one
    operation at a time per connection, so they take turns (a claim is one round trip)."""

    def __init__(self, db: Database) -> None:
        self._dsn = asyncpg_dsn(db.url)
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Any) -> Any:
        async with self._lock:
            return await self._run_locked(fn)

    async def _run_locked(self, fn: Any) -> Any:
        import asyncpg

        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._dsn)
            return await fn(self._conn)
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def claim(self, owner: str, until: float, now: float, limit: int) -> list[Any]:
        return await self._run(lambda c: c.fetch(PG_CLAIM, owner, until, now, limit))

    async def load(self, ids: list[str]) -> list[Any]:
        return await self._run(lambda c: c.fetch(PG_LOAD, ids))

    async def outcomes(
        self,
        updates: list[tuple[Any, ...]],
        suppress: list[tuple[Any, ...]],
        event_rows: list[tuple[Any, ...]],
        finished: list[str],
    ) -> None:
        def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
            return (
                [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
            )

        u = columns(updates, 7)
        sup = columns(suppress, 3)
        ev = columns(event_rows, 9)

        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(PG_OUTCOMES, *u, *sup, utcnow(), *ev)
                if finished:
                    await conn.execute(PG_DROP_BODIES, finished)

        await self._run(write)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None


class DeliveryStore:
    def __init__(self, db: Database, bus: LocalBus | None = None) -> None:
        self.db = db
        self.bus = bus
        self._sqlite = SqliteRunner(db, "delivery-store") if db.is_sqlite else None
        self._pg = None if db.is_sqlite else _PgDelivery(db)

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedRecipient]:
        """Lease up to ``limit`` due recipients to ``owner``, oldest due first."""
        now = time.time() if now is None else now
        if self._sqlite is not None:
            rows = await self._sqlite.write(_sqlite_claim, owner, now + lease_seconds, now, limit)
            return sorted((ClaimedRecipient(*row) for row in rows), key=lambda c: c.id)
        if self._pg is not None:
            rows = await self._pg.claim(owner, now + lease_seconds, now, limit)
            return sorted((ClaimedRecipient(*row) for row in rows), key=lambda c: c.id)
        due = (
            select(r.c.id)
            .where(
                PENDING,
                r.c.next_attempt_at <= now,
                or_(r.c.lease_until.is_(None), r.c.lease_until < now),
            )
            .order_by(r.c.next_attempt_at, r.c.id)
            .limit(limit)
            # PostgreSQL only (SQLite's compiler leaves it out): rows another node is claiming
            # right now are skipped, not waited for.
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(r)
            .where(r.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + lease_seconds)
            .returning(
                r.c.id, r.c.message_id, r.c.rcpt, r.c.rcpt_domain, r.c.attempts, r.c.created_at
            )
        )
        async with self.db.write() as conn:
            result = (await conn.execute(stmt)).all()
        claimed = [ClaimedRecipient(*row) for row in result]
        claimed.sort(key=lambda c: c.id)
        return claimed

    async def load_messages(self, claimed: Iterable[ClaimedRecipient]) -> list[QueuedMessage]:
        """The claimed recipients' messages (one query), each with its claimed recipients."""
        by_message: dict[str, list[ClaimedRecipient]] = {}
        for c in claimed:
            by_message.setdefault(c.message_id, []).append(c)
        if not by_message:
            return []
        if self._sqlite is not None:
            rows: list[Any] = await self._sqlite.read(_sqlite_load, list(by_message))
            return self._queued(rows, by_message)
        if self._pg is not None:
            return self._queued(
                [tuple(r) for r in await self._pg.load(list(by_message))], by_message
            )
        stmt = select(
            m.c.id,
            m.c.user_id,
            m.c.domain_id,
            m.c.mail_from,
            m.c.header_from,
            m.c.subject,
            m.c.body,
            m.c.created_at,
        ).where(m.c.id.in_(list(by_message)))
        async with self.db.read() as conn:
            rows = list((await conn.execute(stmt)).all())
        return self._queued(rows, by_message)

    @staticmethod
    def _queued(
        rows: list[Any], by_message: dict[str, list[ClaimedRecipient]]
    ) -> list[QueuedMessage]:
        out = []
        for mid, user_id, domain_id, mail_from, header_from, subject, body, created_at in rows:
            out.append(
                QueuedMessage(
                    id=mid,
                    user_id=user_id,
                    domain_id=domain_id,
                    mail_from=mail_from,
                    header_from=header_from,
                    subject=subject,
                    # NULL only once every recipient is final; a claimed one never is.
                    body=bytes(body) if body is not None else b"",
                    created_at=created_at,
                    recipients=by_message[mid],
                )
            )
        out.sort(key=lambda q: (q.created_at, q.id))
        return out

    async def record_outcomes(self, outcomes: list[DeliveryOutcome]) -> None:
        """Write a batch of outcomes in ONE transaction, then publish suppression changes.

        Recipients: new state, attempts, next attempt, last reply; lease cleared. An outcome
        only applies to a recipient that is still pending, so a late result of an expired
        lease never overwrites a final state written meanwhile. One event row per outcome; a
        suppression row and a ``suppressed`` event per hard bounce; message bodies dropped once
        all their recipients are final.
        """
        if not outcomes:
            return
        now = time.time()
        updates: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        hard: dict[tuple[int, str], DeliveryOutcome] = {}
        finished: set[str] = set()
        for o in outcomes:
            at = o.created_at or now
            updates.append(
                {
                    "rid": o.recipient_id,
                    "st": o.state,
                    "att": o.attempts,
                    "nxt": o.next_attempt_at,
                    "code": o.code,
                    "resp": storable_text(o.response),
                    "upd": at,
                }
            )
            event_rows.append(_event(o, o.event, at))
            if o.suppress:
                hard[(o.user_id, o.rcpt.lower())] = o
            if o.state in FINAL_STATES:
                finished.add(o.message_id)
        if self._sqlite is not None or self._pg is not None:
            await self._record_raw(updates, event_rows, hard, finished, now)
        else:
            await self._record_sql(updates, event_rows, hard, finished, now)
        if self.bus is not None:
            for user_id, email in hard:
                await self.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")

    async def _record_raw(
        self,
        updates: list[dict[str, Any]],
        event_rows: list[dict[str, Any]],
        hard: dict[tuple[int, str], DeliveryOutcome],
        finished: set[str],
        now: float,
    ) -> None:
        """The SQLite and PostgreSQL hot paths: the same rows, as tuples, for their SQL."""
        suppress = []
        for (user_id, email), o in hard.items():
            suppress.append((user_id, email, (o.response or "hard bounce")[:255]))
            event_rows.append(_event(o, events.SUPPRESSED, o.created_at or now))
        update_rows = [
            (u["rid"], u["st"], u["att"], u["nxt"], u["code"], u["resp"], u["upd"]) for u in updates
        ]
        event_tuples = [
            (
                e["created_at"], e["user_id"], e["domain_id"], e["message_id"], e["recipient"],
                e["event"], e["smtp_code"], e["smtp_response"],
                json.dumps(e["data"]) if e["data"] is not None else None,
            )
            for e in event_rows
        ]  # fmt: skip
        if self._sqlite is not None:
            await self._sqlite.write(
                _sqlite_outcomes,
                update_rows,
                suppress,
                event_tuples,
                sorted(finished),
                sqlite_datetime(utcnow()),
            )
        else:
            assert self._pg is not None
            await self._pg.outcomes(update_rows, suppress, event_tuples, sorted(finished))

    async def _record_sql(
        self,
        updates: list[dict[str, Any]],
        event_rows: list[dict[str, Any]],
        hard: dict[tuple[int, str], DeliveryOutcome],
        finished: set[str],
        now: float,
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(r)
                .where(r.c.id == bindparam("rid"), PENDING)
                .values(
                    state=bindparam("st"),
                    attempts=bindparam("att"),
                    next_attempt_at=bindparam("nxt"),
                    last_code=bindparam("code"),
                    last_response=bindparam("resp"),
                    lease_owner=None,
                    lease_until=None,
                    updated_at=bindparam("upd"),
                ),
                updates,
            )
            for (user_id, email), o in hard.items():
                reason = (o.response or "hard bounce")[:255]
                await suppressions.upsert(conn, user_id, email, reason, source="bounce")
                event_rows.append(_event(o, events.SUPPRESSED, o.created_at or now))
            await conn.execute(insert(t.events), event_rows)
            if finished:
                # The body is kept only while some recipient may still need it.
                await conn.execute(
                    update(m)
                    .where(
                        m.c.id.in_(sorted(finished)),
                        m.c.body.is_not(None),
                        ~exists().where(and_(r.c.message_id == m.c.id, PENDING)),
                    )
                    .values(body=None)
                )

    async def release(self, owner: str, ids: Iterable[int] | None = None) -> int:
        """Give back ``owner``'s leases (all, or only ``ids``) so anyone may claim them now."""
        stmt = (
            update(r)
            .where(r.c.lease_owner == owner, PENDING)
            .values(lease_owner=None, lease_until=None)
        )
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return 0
            stmt = stmt.where(r.c.id.in_(id_list))
        async with self.db.write() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)

    async def pending_count(self) -> int:
        """Recipients queued or deferred (an index-only count over the partial index)."""
        async with self.db.read() as conn:
            value = await conn.scalar(select(func.count()).select_from(r).where(PENDING))
        return int(value or 0)


def _event(o: DeliveryOutcome, name: str, at: float) -> dict[str, Any]:
    return {
        "created_at": at,
        "user_id": o.user_id,
        "domain_id": o.domain_id,
        "message_id": o.message_id,
        "recipient": o.rcpt,
        "event": name,
        "smtp_code": o.code,
        "smtp_response": storable_text(o.response),
        "data": _storable_data(o.data) or None,
    }


def _storable_data(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return data
    return {k: storable_text(v) if isinstance(v, str) else v for k, v in data.items()}
