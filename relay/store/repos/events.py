"""Queries over the event log: browsing, export, counting, and the statistics.

Counts come from the rollup tables the triggers on ``events`` keep (schema.py, migration
0003): whole UTC days from the rollups, and only the part of a period that does not cover a
whole day from the events themselves. A count is therefore exact whatever the period, and
costs a few hundred rollup rows instead of a scan of the matching events. Only a text search
or a message lookup counts the events directly (through their indexes).

Events are read together with their message (LEFT JOIN: a recipient refused at RCPT has no
message row) for the headers the documents show. Every user query is scoped to one user first
(tenant isolation), then optionally to some of their domains; ``user_id=None`` is the admin's
view of every account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import schema as t
from relay.store.eventlog import DAY, KINDS
from relay.store.repos.suppressions import like_pattern

E, M = t.events, t.messages
C, RD, TG = t.event_counts, t.event_rcpt_domains, t.event_tags


@dataclass(frozen=True)
class EventQuery:
    """Which events. ``domain_ids`` must be domains of ``user_id`` (callers check ownership);
    with them the user condition is implied, as a domain belongs to one account for good."""

    user_id: int | None  # None: every account (the admin)
    domain_ids: Sequence[int] | None = None  # None: every domain of the user
    since: float | None = None  # inclusive
    until: float | None = None  # exclusive
    events: Sequence[str] | None = None  # None: every event; empty: none
    message_ids: Sequence[str] | None = None  # queue ids (see message_ids_for)
    text: str | None = None  # free text over addresses, subject, response, client IP

    @property
    def counted_by_rollups(self) -> bool:
        return self.message_ids is None and not self.text

    def scope(self) -> list[ColumnElement[bool]]:
        """Account, domain and event conditions (no time)."""
        where: list[ColumnElement[bool]] = []
        if self.domain_ids is not None:
            where.append(E.c.domain_id.in_(list(self.domain_ids)))
        elif self.user_id is not None:
            where.append(E.c.user_id == self.user_id)
        if self.events is not None:
            where.append(E.c.event.in_(list(self.events)))
        if self.message_ids is not None:
            where.append(E.c.message_id.in_(list(self.message_ids)))
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

    def conditions(self) -> list[ColumnElement[bool]]:
        return self.scope() + _period(self.since, self.until)

    @property
    def needs_messages(self) -> bool:
        return bool(self.text) and self.message_ids is None


def _period(since: float | None, until: float | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(E.c.created_at >= since)
    if until is not None:
        where.append(E.c.created_at < until)
    return where


def _joined(*columns: Any) -> Select[Any]:
    return select(*columns).select_from(E.outerjoin(M, M.c.id == E.c.message_id))


def _from(q: EventQuery, *columns: Any) -> Select[Any]:
    """SELECT over events, joined to messages only when the conditions need it."""
    return _joined(*columns) if q.needs_messages else select(*columns).select_from(E)


_ROW = (
    E.c.id,
    E.c.created_at,
    E.c.event,
    E.c.user_id,
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


async def message_ids_for(conn: AsyncConnection, ref: str) -> list[str]:
    """The queue ids a message reference names: the reference itself (a queue id) and the
    messages whose Message-ID header it is (with or without the angle brackets)."""
    ref = ref.strip()
    bare = ref.strip("<>")
    found = await conn.execute(
        select(M.c.id).where(M.c.message_id_header.in_([bare, f"<{bare}>"])).limit(1000)
    )
    return sorted({bare, *found.scalars()})


async def search(
    conn: AsyncConnection, q: EventQuery, offset: int, limit: int
) -> tuple[int, list[Row]]:
    """One page, newest first, and the number of matching events."""
    total = await count(conn, q)
    if total <= offset:
        return total, []
    rows = await conn.execute(
        _joined(*_ROW)
        .where(*q.conditions())
        .order_by(E.c.created_at.desc(), E.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return total, list(rows.all())


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
            # The plain bound lets the index range start there; the row comparison breaks ties.
            stmt = stmt.where(
                E.c.created_at <= after[0], tuple_(E.c.created_at, E.c.id) < tuple_(*after)
            )
        stmt = stmt.order_by(E.c.created_at.desc(), E.c.id.desc()).limit(min(chunk, left))
        rows = list((await conn.execute(stmt)).all())
        if not rows:
            return
        yield rows
        left -= len(rows)
        after = (rows[-1].created_at, rows[-1].id)


# -- Counting ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Events counted (``n``), those of them counted once per recipient (``uniq``, see
    docs/events.md "Counting"), and the newest one's time."""

    n: int = 0
    uniq: int = 0
    last_at: float | None = None

    def add(self, n: int, uniq: int, last_at: float | None) -> None:
        self.n += int(n or 0)
        self.uniq += int(uniq or 0)
        if last_at is not None and (self.last_at is None or last_at > self.last_at):
            self.last_at = float(last_at)


@dataclass(frozen=True, slots=True)
class Split:
    """A period as whole days (the rollups: ``first_day`` <= day < ``end_day``, None = open)
    and the partial days around them (``edges``, counted from the events)."""

    first_day: int | None
    end_day: int | None
    edges: tuple[tuple[float | None, float | None], ...] = field(default_factory=tuple)
    whole: bool = True  # False: nothing for the rollups, only edges


def split(since: float | None, until: float | None) -> Split:
    first = None if since is None else -(-since // DAY)
    end = None if until is None else until // DAY
    if first is not None and end is not None and first >= end:
        return Split(None, None, ((since, until),), whole=False)
    edges = []
    if since is not None and first is not None and since < first * DAY:
        edges.append((since, first * DAY))
    if until is not None and end is not None and end * DAY < until:
        edges.append((end * DAY, until))
    return Split(
        None if first is None else int(first), None if end is None else int(end), tuple(edges)
    )


_TALLY_KEYS = ("domain_id", "event", "smtp_code")


def _rollup_where(q: EventQuery, s: Split) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if q.user_id is not None:
        where.append(C.c.user_id == q.user_id)
    if q.domain_ids is not None:
        where.append(C.c.domain_id.in_(list(q.domain_ids)))
    if q.events is not None:
        where.append(C.c.event.in_(list(q.events)))
    if s.first_day is not None:
        where.append(C.c.day >= s.first_day)
    if s.end_day is not None:
        where.append(C.c.day < s.end_day)
    return where


def _kind() -> ColumnElement[Any]:
    return case(*[(E.c.event == ev, kind) for ev, kind in KINDS.items()], else_=null())


def counted_once() -> ColumnElement[bool]:
    """The trigger's ``uniq`` for one event (docs/events.md "Counting"): events of no kind,
    events without a message or recipient, and the first event of its kind per recipient
    (the one event_firsts names)."""
    f = t.event_firsts
    return or_(
        E.c.event.not_in(list(KINDS)),
        E.c.message_id.is_(None),
        E.c.recipient.is_(None),
        exists().where(
            f.c.message_id == E.c.message_id,
            f.c.recipient == func.lower(E.c.recipient),
            f.c.kind == _kind(),
            f.c.event_id == E.c.id,
        ),
    )


async def tally(
    conn: AsyncConnection, q: EventQuery, by: Sequence[str] = (), *, unique: bool = False
) -> dict[tuple[Any, ...], Tally]:
    """Events of the query counted per ``by`` (a subset of domain_id, event, smtp_code; an
    event without a code has smtp_code 0). ``unique`` also counts ``uniq`` for partial days
    (the rollups always have it)."""
    assert set(by) <= set(_TALLY_KEYS), by
    out: dict[tuple[Any, ...], Tally] = {}
    if q.events is not None and not q.events:
        return out
    if q.counted_by_rollups:
        s = split(q.since, q.until)
        if s.whole:
            keys = [getattr(C.c, k) for k in by]
            stmt = select(*keys, func.sum(C.c.n), func.sum(C.c.uniq), func.max(C.c.last_at))
            stmt = stmt.where(*_rollup_where(q, s))
            if keys:
                stmt = stmt.group_by(*keys)
            for r in await conn.execute(stmt):
                out.setdefault(tuple(r[: len(by)]), Tally()).add(r[-3], r[-2], r[-1])
        edges = s.edges
    else:
        edges = ((q.since, q.until),)
    for since, until in edges:
        ekeys = [getattr(E.c, k) for k in by]
        uniq: Any = func.count().filter(counted_once()) if unique else literal(0)
        exact = _from(q, *ekeys, func.count(), uniq, func.max(E.c.created_at))
        exact = exact.where(*q.scope(), *_period(since, until))
        if ekeys:
            exact = exact.group_by(*ekeys)
        for r in await conn.execute(exact):
            key = tuple(
                0 if k == "smtp_code" and v is None else v for k, v in zip(by, r, strict=False)
            )
            out.setdefault(key, Tally()).add(r[-3], r[-2], r[-1])
    return {k: v for k, v in out.items() if v.n}


async def count(conn: AsyncConnection, q: EventQuery) -> int:
    """How many events match the query."""
    found = await tally(conn, q)
    return found[()].n if () in found else 0


async def live_domains(conn: AsyncConnection, user_id: int) -> list[Row]:
    """The user's sender domains that are not deleted (id, name), in id order."""
    d = t.gateway_domains
    q = (
        select(d.c.id, d.c.name)
        .where(d.c.user_id == user_id, d.c.status != "Deleted")
        .order_by(d.c.id)
    )
    return list((await conn.execute(q)).all())


def recipient_domain(conn: AsyncConnection) -> ColumnElement[str]:
    """The part of the recipient after the first "@", lower case, in this database's SQL
    dialect (as the rollup of recipient domains has it)."""
    r = E.c.recipient
    at = func.instr(r, "@") if conn.dialect.name == "sqlite" else func.strpos(r, "@")
    return func.lower(func.substr(r, at + 1))


async def buckets(
    conn: AsyncConnection, q: EventQuery, field: str, size: int
) -> list[tuple[Any, int]]:
    """The ``size`` most frequent values of a field (count desc, then value). The event,
    SMTP code and recipient domain come from the rollups (whole days: the query's period must
    be whole days); recipients and message ids are counted from the events."""
    if field in ("event", "smtp-code"):
        key = "event" if field == "event" else "smtp_code"
        found = await tally(conn, q, (key,))
        items = [(k[0], v.n) for k, v in found.items() if not (key == "smtp_code" and k[0] == 0)]
        return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:size]
    if field == "recipient-domain":
        s = split(q.since, q.until)
        assert s.whole and not s.edges, "recipient domains are counted per whole day"
        n = func.sum(RD.c.n).label("n")
        stmt = (
            select(RD.c.rcpt_domain, n)
            .where(*_rd_where(q.domain_ids, s))
            .group_by(RD.c.rcpt_domain)
            .order_by(n.desc(), RD.c.rcpt_domain)
            .limit(size)
        )
        return [(r[0], int(r[1])) for r in await conn.execute(stmt)]
    column = {"recipient": func.lower(E.c.recipient), "message-id": E.c.message_id}[field]
    value = column.label("key")
    cnt = func.count().label("n")
    rows = await conn.execute(
        _from(q, value, cnt)
        .where(*q.conditions(), value.is_not(None))
        .group_by(value)
        .order_by(cnt.desc(), value)
        .limit(size)
    )
    return [(r.key, int(r.n)) for r in rows]


# -- Recipient domains and delivery times -------------------------------------------------------

# Delivery-speed histogram buckets: (label, lower bound in seconds), ascending (the columns
# h0..h7 of event_rcpt_domains, in this order).
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
_H = tuple(getattr(RD.c, f"h{i}") for i in range(len(SPEED_BUCKETS)))


@dataclass(slots=True)
class Timing:
    """One class of events of one recipient domain: counted-once events, how many of them
    have a delivery time, and its sum, min, max and histogram."""

    total: int = 0
    timed: int = 0
    seconds: float = 0.0
    min: float | None = None
    max: float | None = None
    histogram: list[int] = field(default_factory=lambda: [0] * len(SPEED_BUCKETS))

    @property
    def avg(self) -> float | None:
        return self.seconds / self.timed if self.timed else None

    def add(self, r: Any) -> None:
        self.total += int(r.uniq or 0)
        self.timed += int(r.timed or 0)
        self.seconds += float(r.sum_seconds or 0)
        if r.min_seconds is not None:
            self.min = r.min_seconds if self.min is None else min(self.min, r.min_seconds)
        if r.max_seconds is not None:
            self.max = r.max_seconds if self.max is None else max(self.max, r.max_seconds)
        for i in range(len(SPEED_BUCKETS)):
            self.histogram[i] += int(getattr(r, f"h{i}") or 0)


def _rd_where(domain_ids: Sequence[int] | None, s: Split) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if domain_ids is not None:
        where.append(RD.c.domain_id.in_(list(domain_ids)))
    if s.first_day is not None:
        where.append(RD.c.day >= s.first_day)
    if s.end_day is not None:
        where.append(RD.c.day < s.end_day)
    return where


async def recipient_domains(
    conn: AsyncConnection,
    domain_id: int,
    first_day: int,
    end_day: int,
    groups: Mapping[str, Sequence[str]],
    *,
    rcpt_domain: str | None = None,
) -> dict[str, dict[str, Timing]]:
    """{recipient domain: {class: Timing}} of a sender domain over whole days
    ``first_day`` <= day < ``end_day``; ``groups`` maps class names to event names."""
    klass = case(
        *[(RD.c.event.in_(list(names)), name) for name, names in groups.items()], else_=None
    ).label("klass")
    all_events = [e for names in groups.values() for e in names]
    where = [*_rd_where([domain_id], Split(first_day, end_day)), RD.c.event.in_(all_events)]
    if rcpt_domain is not None:
        where.append(RD.c.rcpt_domain == rcpt_domain)
    stmt = (
        select(
            RD.c.rcpt_domain,
            klass,
            func.sum(RD.c.uniq).label("uniq"),
            func.sum(RD.c.timed).label("timed"),
            func.sum(RD.c.sum_seconds).label("sum_seconds"),
            func.min(RD.c.min_seconds).label("min_seconds"),
            func.max(RD.c.max_seconds).label("max_seconds"),
            *(func.sum(h).label(h.name) for h in _H),
        )
        .where(*where)
        .group_by(RD.c.rcpt_domain, klass)
    )
    out: dict[str, dict[str, Timing]] = {}
    for r in await conn.execute(stmt):
        out.setdefault(r.rcpt_domain, {}).setdefault(r.klass, Timing()).add(r)
    return out


async def tag_counts(
    conn: AsyncConnection, domain_id: int, first_day: int, end_day: int, names: Iterable[str]
) -> dict[tuple[str, str], int]:
    """{(tag, event): counted-once events} of a sender domain's tagged messages."""
    stmt = (
        select(TG.c.tag, TG.c.event, func.sum(TG.c.uniq))
        .where(
            TG.c.domain_id == domain_id,
            TG.c.day >= first_day,
            TG.c.day < end_day,
            TG.c.event.in_(list(names)),
        )
        .group_by(TG.c.tag, TG.c.event)
    )
    return {(r[0], r[1]): int(r[2] or 0) for r in await conn.execute(stmt)}


# -- One message ------------------------------------------------------------------------------


async def find_messages(
    conn: AsyncConnection, ref: str, user_id: int | None, limit: int = 20
) -> list[Row]:
    """The messages a queue id or Message-ID header names (newest first), of one account or
    (``user_id`` None) of any."""
    d = t.gateway_domains
    ids = await message_ids_for(conn, ref)
    stmt = (
        select(M, d.c.name.label("domain_name"))
        .select_from(M.outerjoin(d, d.c.id == M.c.domain_id))
        .where(M.c.id.in_(ids))
        .order_by(M.c.created_at.desc(), M.c.id)
        .limit(limit)
    )
    if user_id is not None:
        stmt = stmt.where(M.c.user_id == user_id)
    return list((await conn.execute(stmt)).all())


async def recipients_of(conn: AsyncConnection, message_ids: Sequence[str]) -> list[Row]:
    r = t.recipients
    stmt = select(r).where(r.c.message_id.in_(list(message_ids))).order_by(r.c.message_id, r.c.id)
    return list((await conn.execute(stmt)).all())


async def events_of(conn: AsyncConnection, message_ids: Sequence[str]) -> list[Row]:
    """Every event of the messages, oldest first."""
    stmt = (
        _joined(*_ROW).where(E.c.message_id.in_(list(message_ids))).order_by(E.c.created_at, E.c.id)
    )
    return list((await conn.execute(stmt)).all())


async def last_activity(conn: AsyncConnection, user_id: int, since: float) -> dict[int, float]:
    """{domain_id: time of its newest event} of a user's domains with events since ``since``.
    The newest event is in a rollup row of its day, so the rollups answer it exactly."""
    newest = func.max(C.c.last_at)
    stmt = (
        select(C.c.domain_id, newest)
        .where(C.c.user_id == user_id, C.c.day >= int(since // DAY))
        .group_by(C.c.domain_id)
        .having(newest >= since)
    )
    return {int(r[0]): float(r[1]) for r in await conn.execute(stmt)}
