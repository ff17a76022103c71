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

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Float,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    case,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    union,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import eventlog, trigrams
from relay.store import schema as t
from relay.store.eventlog import DAY, KINDS
from relay.store.repos.suppressions import like_pattern

E, M = t.events, t.messages
C, RD, TG = t.event_counts, t.event_rcpt_domains, t.event_tags


# PostgreSQL's trigram-indexed text of each message (migration 0003; not part of schema.py:
# a private structure of the PostgreSQL layout, like the partitions).
_private = MetaData()
MESSAGE_SEARCH = Table(
    "message_search",
    _private,
    Column("message_id", String(36)),
    Column("created_at", Float),
    Column("search", Text),
    schema=eventlog.PARTITION_SCHEMA,
)
MESSAGE_SEARCH_TABLE = f"{eventlog.PARTITION_SCHEMA}.message_search"
# The same expression as the partitions' trigram index.
EVENT_SEARCH: ColumnElement[str] = literal_column(
    eventlog.EVENT_SEARCH.replace("coalesce(", "coalesce(events.")
)
# What the Query filter searches: the event's own fields, and its message's.
EVENT_TEXT = (E.c.recipient, E.c.message_id, E.c.smtp_response)
MESSAGE_TEXT = (M.c.subject, M.c.header_from, M.c.mail_from, M.c.message_id_header, M.c.client_ip)


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

    @property
    def searching(self) -> bool:
        return self.message_ids is None and bool(self.text)

    @property
    def pattern(self) -> str:
        return like_pattern((self.text or "").lower())

    def scope(self, *, with_text: bool = True) -> list[ColumnElement[bool]]:
        """Account, domain, event and message conditions (no time), and the text condition
        unless ``with_text`` is false (a condition on the messages too: they must be joined)."""
        where: list[ColumnElement[bool]] = []
        if self.domain_ids is not None:
            where.append(E.c.domain_id.in_(list(self.domain_ids)))
        elif self.user_id is not None:
            where.append(E.c.user_id == self.user_id)
        if self.events is not None:
            where.append(E.c.event.in_(list(self.events)))
        if self.message_ids is not None:
            where.append(E.c.message_id.in_(list(self.message_ids)))
        elif self.text and with_text:
            where.append(
                or_(
                    *(
                        func.lower(col).like(self.pattern, escape="\\")
                        for col in (*EVENT_TEXT, *MESSAGE_TEXT)
                    )
                )
            )
        return where

    def conditions(self) -> list[ColumnElement[bool]]:
        return self.scope() + _period(self.since, self.until)


def _period(since: float | None, until: float | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(E.c.created_at >= since)
    if until is not None:
        where.append(E.c.created_at < until)
    return where


def _indexed_search(conn: AsyncConnection, q: EventQuery) -> bool:
    """PostgreSQL answers a text search from its trigram indexes (the same matches: a field
    separator in the text is the one thing that would differ, so it is searched plainly)."""
    return conn.dialect.name == "postgresql" and q.searching and "\x01" not in (q.text or "")


@dataclass(frozen=True, slots=True)
class _Common:
    """The common trigrams of the two searched texts (relay/store/trigrams.py)."""

    events: frozenset[str] | None = None
    messages: frozenset[str] | None = None


async def _common(conn: AsyncConnection, q: EventQuery) -> _Common:
    """What ``_select`` and ``_hits`` need for ``q``: the samples when it is an indexed text
    search, nothing otherwise."""
    if not _indexed_search(conn, q):
        return _Common()
    return _Common(
        await trigrams.common_trigrams(conn, "events", eventlog.EVENT_SEARCH),
        await trigrams.common_trigrams(conn, MESSAGE_SEARCH_TABLE, "search"),
    )


def _contains(expr: ColumnElement[str], q: EventQuery, common: frozenset[str] | None) -> Any:
    """``expr`` contains the query's text, asked of its trigram index by the text's rare
    stretches when it has some (relay/store/trigrams.py), by the whole text otherwise."""
    narrow = trigrams.index_pattern((q.text or "").lower(), common) if common else None
    if narrow is None:
        return expr.like(q.pattern, escape="\\")
    # strpos: the whole text, checked on the rows found (not a trigram index question).
    return and_(expr.like(narrow), func.strpos(expr, (q.text or "").lower()) > 0)


def _hits(q: EventQuery, common: _Common) -> Any:
    """(created_at, id) of the events a text search matches: by their own fields, or by their
    message's; each arm with its own trigram index."""
    base = [*q.scope(with_text=False), *_period(q.since, q.until)]
    own = select(E.c.created_at, E.c.id).where(*base, _contains(EVENT_SEARCH, q, common.events))
    by_message = select(E.c.created_at, E.c.id).where(
        *base,
        E.c.message_id.in_(
            select(MESSAGE_SEARCH.c.message_id).where(
                _contains(MESSAGE_SEARCH.c.search, q, common.messages)
            )
        ),
    )
    return union(own, by_message).subquery("hits")


def _select(
    conn: AsyncConnection, q: EventQuery, *columns: Any, messages: bool, common: _Common
) -> Select[Any]:
    """SELECT ``columns`` over the query's events (every condition applied), with their
    messages joined when ``messages``; ``common`` is for an indexed search (``_common``)."""
    if _indexed_search(conn, q):
        hits = _hits(q, common)
        joined: Any = hits.join(E, and_(E.c.created_at == hits.c.created_at, E.c.id == hits.c.id))
        if messages:
            joined = joined.outerjoin(M, M.c.id == E.c.message_id)
        return select(*columns).select_from(joined)
    if messages or q.searching:
        return _joined(*columns).where(*q.conditions())
    return select(*columns).select_from(E).where(*q.conditions())


async def no_jit(conn: AsyncConnection, *, custom_plan: bool = False) -> None:
    """PostgreSQL compiles a query it estimates as costly (JIT), which for the events' big but
    index-driven reads costs more time than it saves: off for the rest of this transaction.
    ``custom_plan``: plan each statement for its parameters' values, never the prepared
    statement's generic plan (which cannot see the search pattern, so does not know the
    trigram index finds few rows, nor which partitions a period keeps)."""
    if conn.dialect.name == "postgresql":
        mode = "force_custom_plan" if custom_plan else "auto"
        await conn.exec_driver_sql(
            "SELECT set_config('jit', 'off', true), set_config('plan_cache_mode', $1, true)",
            (mode,),
        )


def _joined(*columns: Any) -> Select[Any]:
    return select(*columns).select_from(E.outerjoin(M, M.c.id == E.c.message_id))


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
    if _indexed_search(conn, q):
        # The text search's matches are found once, for the count and the page.
        keys = await _hit_keys(conn, q)
        return len(keys), await _rows_of(conn, keys[offset : offset + limit])
    total = await count(conn, q)
    if total <= offset:
        return total, []
    await no_jit(conn)
    rows = await conn.execute(
        _select(conn, q, *_ROW, messages=True, common=_Common())
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
    if _indexed_search(conn, q):
        keys = (await _hit_keys(conn, q))[:limit]
        for i in range(0, len(keys), chunk):
            yield await _rows_of(conn, keys[i : i + chunk])
        return
    after: tuple[float, int] | None = None
    left = limit
    await no_jit(conn)
    while left > 0:
        stmt = _select(conn, q, *_ROW, messages=True, common=_Common())
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


async def _hit_keys(conn: AsyncConnection, q: EventQuery) -> list[tuple[float, int]]:
    """(created_at, id) of every event a text search matches, newest first."""
    common = await _common(conn, q)
    await no_jit(conn, custom_plan=True)
    hits = _hits(q, common)
    stmt = select(hits.c.created_at, hits.c.id).order_by(hits.c.created_at.desc(), hits.c.id.desc())
    return [(r[0], r[1]) for r in await conn.execute(stmt)]


async def _rows_of(conn: AsyncConnection, keys: Sequence[tuple[float, int]]) -> list[Row]:
    """The events of these keys with their messages, in the keys' order."""
    if not keys:
        return []
    stmt = _joined(*_ROW).where(
        # created_at first: it picks the partitions.
        E.c.created_at.in_(sorted({k[0] for k in keys})),
        E.c.id.in_([k[1] for k in keys]),
    )
    found = {(r.created_at, r.id): r for r in await conn.execute(stmt)}
    return [found[k] for k in keys if k in found]


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


def _key(by: Sequence[str], row: Any) -> tuple[Any, ...]:
    return tuple(0 if k == "smtp_code" and v is None else v for k, v in zip(by, row, strict=False))


async def tally(
    conn: AsyncConnection, q: EventQuery, by: Sequence[str] = (), *, unique: bool = False
) -> dict[tuple[Any, ...], Tally]:
    """Events of the query counted per ``by`` (a subset of domain_id, event, smtp_code; an
    event without a code has smtp_code 0). Whole days come from the rollups, partial days
    from the events (``unique``: with ``uniq`` counted there too; the rollups always have
    it). A text search or a message lookup counts the events."""
    assert set(by) <= set(_TALLY_KEYS), by
    out: dict[tuple[Any, ...], Tally] = {}
    if q.events is not None and not q.events:
        return out
    ekeys = [getattr(E.c, k) for k in by]
    if not q.counted_by_rollups:
        common = await _common(conn, q)
        await no_jit(conn)
        stmt = _select(
            conn,
            q,
            *ekeys,
            func.count(),
            literal(0),
            func.max(E.c.created_at),
            messages=False,
            common=common,
        )
        if ekeys:
            stmt = stmt.group_by(*ekeys)
        for r in await conn.execute(stmt):
            out.setdefault(_key(by, r), Tally()).add(r[-3], r[-2], r[-1])
        return {k: v for k, v in out.items() if v.n}
    s = split(q.since, q.until)
    if s.whole:
        keys = [getattr(C.c, k) for k in by]
        rolled = select(*keys, func.sum(C.c.n), func.sum(C.c.uniq), func.max(C.c.last_at))
        rolled = rolled.where(*_rollup_where(q, s))
        if keys:
            rolled = rolled.group_by(*keys)
        for r in await conn.execute(rolled):
            out.setdefault(tuple(r[: len(by)]), Tally()).add(r[-3], r[-2], r[-1])
    uniq: Any = func.count().filter(counted_once()) if unique else literal(0)
    if s.edges:
        await no_jit(conn)
    for since, until in s.edges:
        exact = select(*ekeys, func.count(), uniq, func.max(E.c.created_at)).select_from(E)
        exact = exact.where(*q.scope(), *_period(since, until))
        if ekeys:
            exact = exact.group_by(*ekeys)
        for r in await conn.execute(exact):
            out.setdefault(_key(by, r), Tally()).add(r[-3], r[-2], r[-1])
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
        n = func.sum(RD.c.n).label("n")  # every event of the recipient domain
        stmt = (
            select(RD.c.rcpt_domain, n)
            .where(*_rd_where(q.domain_ids, s))
            .group_by(RD.c.rcpt_domain)
            .order_by(n.desc(), RD.c.rcpt_domain)
            .limit(size)
        )
        return [(r[0], int(r[1])) for r in await conn.execute(stmt)]
    common = await _common(conn, q)
    await no_jit(conn)
    column = {"recipient": func.lower(E.c.recipient), "message-id": E.c.message_id}[field]
    value = column.label("key")
    cnt = func.count().label("n")
    rows = await conn.execute(
        _select(conn, q, value, cnt, messages=False, common=common)
        .where(value.is_not(None))
        .group_by(value)
        .order_by(cnt.desc(), value)
        .limit(size)
    )
    return [(r.key, int(r.n)) for r in rows]


# -- Recipient domains and delivery times -------------------------------------------------------

# Delivery-speed histogram buckets: (label, lower bound in seconds), ascending (the columns
# <class>_h0..h7 of event_rcpt_domains, in this order).
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


@dataclass(slots=True)
class Timing:
    """One class of a recipient domain's events (sent, failed): counted once per recipient,
    how many of them have a delivery time, and its sum, min, max and histogram."""

    total: int = 0
    timed: int = 0
    seconds: float = 0.0
    min: float | None = None
    max: float | None = None
    histogram: list[int] = field(default_factory=lambda: [0] * len(SPEED_BUCKETS))

    @property
    def avg(self) -> float | None:
        return self.seconds / self.timed if self.timed else None


@dataclass(slots=True)
class RcptDomain:
    n: int = 0  # every event
    accepted: int = 0
    sent: Timing = field(default_factory=Timing)
    failed: Timing = field(default_factory=Timing)


def _rd_row(row: Any, detail: bool) -> RcptDomain:
    out = RcptDomain(int(row.n or 0), int(row.accepted or 0))
    classes = t.RCPT_CLASSES if detail else ("sent", "failed")
    for k in classes:
        timing: Timing = getattr(out, k)
        timing.total = int(getattr(row, k) or 0)
        if not detail and k != "sent":
            continue
        timing.timed = int(getattr(row, f"{k}_timed") or 0)
        timing.seconds = float(getattr(row, f"{k}_seconds") or 0)
        low, high = getattr(row, f"{k}_min"), getattr(row, f"{k}_max")
        timing.min = None if low is None else float(low)
        timing.max = None if high is None else float(high)
        if detail:
            timing.histogram = [
                int(getattr(row, f"{k}_h{i}") or 0) for i in range(len(SPEED_BUCKETS))
            ]
    return out


def _rd_columns(detail: bool) -> list[Any]:
    """Sums of event_rcpt_domains' columns: all of them (``detail``), or the ones its key's
    index covers (counts, and the sent class's times without histogram)."""
    names = [c.name for c in RD.c if c.name not in ("domain_id", "day", "rcpt_domain", "seq")]
    if not detail:
        names = list(t.RCPT_DOMAINS_COVERED)

    def total(name: str) -> Any:
        if name.endswith("_min"):
            return func.min(RD.c[name])
        if name.endswith("_max"):
            return func.max(RD.c[name])
        return func.sum(RD.c[name])

    return [total(n).label(n) for n in names]


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
    *,
    rcpt_domain: str | None = None,
    detail: bool = True,
) -> dict[str, RcptDomain]:
    """{recipient domain: its counts} of a sender domain over whole days ``first_day`` <=
    day < ``end_day`` (only ``rcpt_domain`` if given). Without ``detail``: the counts and the
    sent class's times only, answered from the key's index alone on PostgreSQL."""
    where = _rd_where([domain_id], Split(first_day, end_day))
    if rcpt_domain is not None:
        where.append(RD.c.rcpt_domain == rcpt_domain)
    stmt = select(RD.c.rcpt_domain, *_rd_columns(detail)).where(*where).group_by(RD.c.rcpt_domain)
    return {r.rcpt_domain: _rd_row(r, detail) for r in await conn.execute(stmt)}


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
