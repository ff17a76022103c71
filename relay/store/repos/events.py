"""Queries over the event log: browsing, export, and the statistics' aggregations.

Events are read together with their message (LEFT JOIN: a recipient refused at RCPT has no
message row) for the headers the documents show. Every query is scoped to one user first
(tenant isolation), then optionally to some of their domains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, case, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.repos.suppressions import like_pattern

E, M = t.events, t.messages


@dataclass(frozen=True)
class EventQuery:
    user_id: int
    domain_ids: Sequence[int] | None = None  # None: every domain of the user
    since: float | None = None  # inclusive
    until: float | None = None  # exclusive
    events: Sequence[str] | None = None  # None: every event; empty: none
    message_id: str | None = None  # our id or the Message-ID header
    text: str | None = None  # free text over addresses, subject, response, client IP
    recipient_domain: str | None = None  # recipients @ this domain

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [E.c.user_id == self.user_id]
        if self.domain_ids is not None:
            where.append(E.c.domain_id.in_(list(self.domain_ids)))
        if self.since is not None:
            where.append(E.c.created_at >= self.since)
        if self.until is not None:
            where.append(E.c.created_at < self.until)
        if self.events is not None:
            where.append(E.c.event.in_(list(self.events)))
        if self.recipient_domain:
            pattern = "%@" + like_pattern(self.recipient_domain.lower())[1:-1]
            where.append(func.lower(E.c.recipient).like(pattern, escape="\\"))
        if self.message_id:
            mid = self.message_id.strip().strip("<>")
            where.append(
                or_(
                    E.c.message_id == mid,
                    M.c.message_id_header.in_([mid, f"<{mid}>"]),
                )
            )
        elif self.text:
            pattern = like_pattern(self.text.lower())
            where.append(
                or_(
                    *(
                        func.lower(col).like(pattern, escape="\\")
                        for col in (
                            E.c.recipient,
                            E.c.message_id,
                            E.c.smtp_response,
                            M.c.subject,
                            M.c.header_from,
                            M.c.mail_from,
                            M.c.message_id_header,
                            M.c.client_ip,
                        )
                    )
                )
            )
        return where


def _joined(*columns: Any) -> Select[Any]:
    return select(*columns).select_from(E.outerjoin(M, M.c.id == E.c.message_id))


_ROW = (
    E.c.id,
    E.c.created_at,
    E.c.event,
    E.c.domain_id,
    E.c.recipient,
    E.c.message_id,
    E.c.smtp_code,
    E.c.smtp_response,
    E.c.data,
    M.c.subject,
    M.c.header_from,
    M.c.mail_from,
    M.c.message_id_header,
)


async def search(
    conn: AsyncConnection, q: EventQuery, offset: int, limit: int
) -> tuple[int, list[Row]]:
    """One page, newest first, and the number of matching events."""
    where = q.conditions()
    total = int(await conn.scalar(_joined(func.count()).where(*where)) or 0)
    rows = await conn.execute(
        _joined(*_ROW)
        .where(*where)
        .order_by(E.c.created_at.desc(), E.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return total, list(rows.all())


async def count(conn: AsyncConnection, q: EventQuery) -> int:
    return int(await conn.scalar(_joined(func.count()).where(*q.conditions())) or 0)


async def chunks(
    conn: AsyncConnection, q: EventQuery, limit: int, chunk: int = 1000
) -> AsyncIterator[list[Row]]:
    """Up to ``limit`` events, newest first, ``chunk`` at a time (keyset pagination, so each
    round trip costs the same however deep the export is)."""
    where = q.conditions()
    after: tuple[float, int] | None = None
    left = limit
    while left > 0:
        stmt = _joined(*_ROW).where(*where)
        if after is not None:
            stmt = stmt.where(tuple_(E.c.created_at, E.c.id) < tuple_(*after))
        stmt = stmt.order_by(E.c.created_at.desc(), E.c.id.desc()).limit(min(chunk, left))
        rows = list((await conn.execute(stmt)).all())
        if not rows:
            return
        yield rows
        left -= len(rows)
        after = (rows[-1].created_at, rows[-1].id)


async def live_domains(conn: AsyncConnection, user_id: int) -> list[Row]:
    """The user's sender domains that are not deleted (id, name), in id order."""
    d = t.gateway_domains
    q = (
        select(d.c.id, d.c.name)
        .where(d.c.user_id == user_id, d.c.status != "Deleted")
        .order_by(d.c.id)
    )
    return list((await conn.execute(q)).all())


async def counts_by_domain(conn: AsyncConnection, q: EventQuery) -> dict[tuple[int, str], int]:
    """{(domain_id, event): count} for the query."""
    rows = await conn.execute(
        select(E.c.domain_id, E.c.event, func.count())
        .where(*q.conditions())
        .group_by(E.c.domain_id, E.c.event)
    )
    return {(r[0], r[1]): int(r[2]) for r in rows}


def recipient_domain(conn: AsyncConnection) -> ColumnElement[str]:
    """The part of the recipient after "@", lower case, in this database's SQL dialect."""
    r = E.c.recipient
    if conn.dialect.name == "sqlite":
        return func.lower(func.substr(r, func.instr(r, "@") + 1))
    return func.lower(func.split_part(r, "@", 2))


def aggregation_key(conn: AsyncConnection, field: str) -> ColumnElement[Any]:
    return {
        "event": E.c.event,
        "recipient-domain": recipient_domain(conn),
        "recipient": func.lower(E.c.recipient),
        "smtp-code": E.c.smtp_code,
        "message-id": E.c.message_id,
    }[field]


async def buckets(
    conn: AsyncConnection, q: EventQuery, field: str, size: int
) -> list[tuple[Any, int]]:
    """The ``size`` most frequent values of a field (count desc, then value)."""
    key = aggregation_key(conn, field).label("key")
    n = func.count().label("n")
    rows = await conn.execute(
        _joined(key, n)
        .where(*q.conditions(), key.is_not(None))
        .group_by(key)
        .order_by(n.desc(), key)
        .limit(size)
    )
    return [(r.key, int(r.n)) for r in rows]


def delivery_seconds() -> ColumnElement[float]:
    """Seconds a delivery took: the SMTP session time when the delivery side records it
    (``data.seconds``, recorded by the delivery worker), else from acceptance to the outcome."""
    return func.coalesce(E.c.data["seconds"].as_float(), E.c.created_at - M.c.created_at)


# Delivery-speed histogram buckets: (label, lower bound in seconds), ascending.
SPEED_BUCKETS = (
    ("< 1s", 0.0),
    ("1-5s", 1.0),
    ("5-10s", 5.0),
    ("10-30s", 10.0),
    ("30-60s", 30.0),
    ("1-5m", 60.0),
    ("5-10m", 300.0),
    ("> 10m", 600.0),
)


def _bucket_index(seconds: ColumnElement[float]) -> ColumnElement[int]:
    whens = [(seconds < SPEED_BUCKETS[i + 1][1], i) for i in range(len(SPEED_BUCKETS) - 1)]
    return case(*whens, else_=len(SPEED_BUCKETS) - 1)


@dataclass(frozen=True, slots=True)
class TimingRow:
    group: str
    total: int
    timed: int
    avg: float | None
    min: float | None
    max: float | None


async def timings(
    conn: AsyncConnection,
    q: EventQuery,
    groups: Mapping[str, Sequence[str]],
    *,
    by_recipient_domain: bool = False,
) -> list[tuple[str | None, TimingRow]]:
    """Per class of events (``groups``: class name -> our event names), and optionally per
    recipient domain: counts and delivery-time statistics."""
    secs = delivery_seconds()
    klass = case(
        *[(E.c.event.in_(list(names)), name) for name, names in groups.items()], else_=None
    ).label("klass")
    cols: list[Any] = [
        klass,
        func.count().label("total"),
        func.count(secs).label("timed"),
        func.avg(secs).label("avg"),
        func.min(secs).label("min"),
        func.max(secs).label("max"),
    ]
    group_by: list[Any] = [klass]
    if by_recipient_domain:
        rdom = recipient_domain(conn).label("rdom")
        cols.insert(0, rdom)
        group_by.insert(0, rdom)
    all_events = [e for names in groups.values() for e in names]
    stmt = _joined(*cols).where(*q.conditions(), E.c.event.in_(all_events)).group_by(*group_by)
    out = []
    for r in await conn.execute(stmt):
        row = TimingRow(
            r.klass,
            int(r.total),
            int(r.timed),
            float(r.avg) if r.avg is not None else None,
            float(r.min) if r.min is not None else None,
            float(r.max) if r.max is not None else None,
        )
        out.append((r.rdom if by_recipient_domain else None, row))
    return out


async def speed_histogram(
    conn: AsyncConnection, q: EventQuery, groups: Mapping[str, Sequence[str]]
) -> dict[str, list[tuple[int, int]]]:
    """{class: [(bucket index, count)]} for events with a known delivery time."""
    secs = delivery_seconds()
    klass = case(
        *[(E.c.event.in_(list(names)), name) for name, names in groups.items()], else_=None
    ).label("klass")
    bucket = _bucket_index(secs).label("bucket")
    all_events = [e for names in groups.values() for e in names]
    stmt = (
        _joined(klass, bucket, func.count().label("n"))
        .where(*q.conditions(), E.c.event.in_(all_events), secs.is_not(None))
        .group_by(klass, bucket)
        .order_by(klass, bucket)
    )
    out: dict[str, list[tuple[int, int]]] = {}
    for r in await conn.execute(stmt):
        out.setdefault(r.klass, []).append((int(r.bucket), int(r.n)))
    return out


async def tagged(conn: AsyncConnection, q: EventQuery, event: str) -> AsyncIterator[list[str]]:
    """The tags of every ``event`` event in the query whose message was sent with tags (the
    tags are on the message's 'accepted' event, ``data.tags``)."""
    acc = E.alias("acc")
    stmt = (
        select(acc.c.data)
        .select_from(
            E.join(
                acc,
                and_(
                    acc.c.message_id == E.c.message_id,
                    acc.c.recipient == E.c.recipient,
                    acc.c.event == "accepted",
                ),
            )
        )
        .where(
            E.c.user_id == q.user_id,
            E.c.event == event,
            # NULL when the message had no tags (data is SQL NULL, JSON null, or has no "tags").
            acc.c.data["tags"].as_string().is_not(None),
            *([E.c.domain_id.in_(list(q.domain_ids))] if q.domain_ids is not None else []),
            *([E.c.created_at >= q.since] if q.since is not None else []),
            *([E.c.created_at < q.until] if q.until is not None else []),
        )
    )
    for row in await conn.execute(stmt):
        tags = (row.data or {}).get("tags")
        if isinstance(tags, list):
            yield [str(tag) for tag in tags]
