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
from relay.store.db import Database
from relay.store.repos import suppressions

r = t.recipients
m = t.messages

PENDING = text("recipients.state IN ('queued', 'deferred')")


class DeliveryStore:
    def __init__(self, db: Database, bus: LocalBus | None = None) -> None:
        self.db = db
        self.bus = bus

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedRecipient]:
        """Lease up to ``limit`` due recipients to ``owner``, oldest due first."""
        now = time.time() if now is None else now
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
            rows = (await conn.execute(stmt)).all()
        claimed = [ClaimedRecipient(*row) for row in rows]
        claimed.sort(key=lambda c: c.id)
        return claimed

    async def load_messages(self, claimed: Iterable[ClaimedRecipient]) -> list[QueuedMessage]:
        """The claimed recipients' messages (one query), each with its claimed recipients."""
        by_message: dict[str, list[ClaimedRecipient]] = {}
        for c in claimed:
            by_message.setdefault(c.message_id, []).append(c)
        if not by_message:
            return []
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
            rows = (await conn.execute(stmt)).all()
        out = []
        for row in rows:
            out.append(
                QueuedMessage(
                    id=row.id,
                    user_id=row.user_id,
                    domain_id=row.domain_id,
                    mail_from=row.mail_from,
                    header_from=row.header_from,
                    subject=row.subject,
                    # NULL only once every recipient is final; a claimed one never is.
                    body=bytes(row.body) if row.body is not None else b"",
                    created_at=row.created_at,
                    recipients=by_message[row.id],
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
                    "resp": o.response,
                    "upd": at,
                }
            )
            event_rows.append(_event(o, o.event, at))
            if o.suppress:
                hard[(o.user_id, o.rcpt.lower())] = o
            if o.state in FINAL_STATES:
                finished.add(o.message_id)
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
        if self.bus is not None:
            for user_id, email in hard:
                await self.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")

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
        "smtp_response": o.response,
        "data": o.data or None,
    }
