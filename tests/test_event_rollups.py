"""The rollups the triggers on ``events`` keep agree with a recount of the events themselves,
whoever wrote the events and however the period falls on days; PostgreSQL's folding changes
no answer; a trigger another part of the relay puts on ``events`` keeps working."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from relay import events as ev
from relay.services import Services
from relay.store import eventlog
from relay.store import schema as t
from relay.store.eventlog import DAY, KINDS
from relay.store.repos import events as repo
from tests.apihelpers import outcome, queue_writer
from tests.conftest import Api
from tests.eventseed import E0, Engaged, at, seed, seed_engagement


@pytest.fixture
async def engaged(api: Api, services: Services) -> Engaged:
    await seed(api, services)
    return await seed_engagement(api, services)


def _machine(data: Any) -> bool:
    if isinstance(data, str):
        data = json.loads(data)
    value = data.get("machine") if isinstance(data, dict) else None
    return value not in (None, False, 0, "", "false", "0")


async def recount(services: Services) -> list[dict[str, Any]]:
    """Every event with the trigger's ``uniq`` worked out in Python (docs/events.md)."""
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.events).order_by(t.events.c.id))).all()
    firsts: dict[tuple[str, str, str], int] = {}
    out = []
    for r in rows:
        kind = KINDS.get(r.event)
        machine = _machine(r.data)
        key = (r.message_id, (r.recipient or "").lower(), kind or "")
        if kind and not machine and r.message_id and r.recipient:
            firsts.setdefault(key, r.id)
        if kind is None:
            uniq = True
        elif machine:
            uniq = False
        elif r.message_id is None or r.recipient is None:
            uniq = True
        else:
            uniq = firsts[key] == r.id
        out.append(r._asdict() | {"uniq": uniq})
    return out


PERIODS = [
    (None, None),
    (at("2026-03-01 00:00:00"), at("2026-04-01 00:00:00")),  # whole days
    (E0 + 5, E0 + 700),  # inside one day
    (E0 - 3600, E0 + 1.5 * DAY),  # partial days at both ends
    (None, E0 + 100),
    (E0 + 100, None),
    (at("2026-01-10 12:00:02"), at("2026-01-10 12:05:00")),
]


async def check_tallies(services: Services, user_id: int) -> None:
    events = await recount(services)
    for since, until in PERIODS:
        expected: Counter[tuple[int, str]] = Counter()
        expected_uniq: Counter[tuple[int, str]] = Counter()
        for e in events:
            if e["user_id"] != user_id:
                continue
            if since is not None and e["created_at"] < since:
                continue
            if until is not None and e["created_at"] >= until:
                continue
            expected[(e["domain_id"], e["event"])] += 1
            expected_uniq[(e["domain_id"], e["event"])] += e["uniq"]
        q = repo.EventQuery(user_id, since=since, until=until)
        async with services.db.read() as conn:
            found = await repo.tally(conn, q, ("domain_id", "event"), unique=True)
            total = await repo.count(conn, q)
        assert {k: v.n for k, v in found.items()} == dict(expected), (since, until)
        assert {k: v.uniq for k, v in found.items()} == dict(expected_uniq), (since, until)
        assert total == sum(expected.values())


async def test_rollups_agree_with_a_recount(services: Services, engaged: Engaged) -> None:
    await check_tallies(services, engaged.acct.user_id)
    # Recipient domains over March, from the events themselves.
    events = [e for e in await recount(services) if e["domain_id"] == engaged.acct.domain_id]
    expected: dict[str, Counter[str]] = {}
    for e in events:
        rdomain = (e["recipient"] or "").lower().split("@", 1)[-1]
        c = expected.setdefault(rdomain, Counter())
        c["n"] += 1
        c["accepted"] += e["event"] == ev.ACCEPTED
        c["sent"] += e["uniq"] and e["event"] in ("delivered", "accepted-by-mta")
        c["failed"] += e["uniq"] and e["event"] in ("bounced", "rejected", "failed")
    day = eventlog.day_of(E0)
    async with services.db.read() as conn:
        found = await repo.recipient_domains(conn, engaged.acct.domain_id, day - 5, day + 5)
    assert {
        d: {"n": r.n, "accepted": r.accepted, "sent": r.sent.total, "failed": r.failed.total}
        for d, r in found.items()
    } == {d: {k: c[k] for k in ("n", "accepted", "sent", "failed")} for d, c in expected.items()}


async def test_every_writer_is_counted(api: Api, services: Services, engaged: Engaged) -> None:
    acct = engaged.acct
    row = {
        "created_at": E0 + 7000,
        "user_id": acct.user_id,
        "domain_id": acct.domain_id,
        "message_id": "e1",
        "recipient": "a@gmail.com",
        "smtp_code": None,
        "smtp_response": None,
        "data": None,
    }
    async with services.db.write() as conn:
        # SQLAlchemy, several rows in one statement (as the admin commands write).
        await conn.execute(
            insert(t.events),
            [row | {"event": ev.CLICKED}, row | {"event": ev.OPENED, "created_at": E0 + 7001}],
        )
        # Plain SQL, one row, a name nobody defined yet.
        marks = ", ".join(f":{k}" for k in (*row, "event"))
        await conn.execute(
            text(f"INSERT INTO events ({', '.join((*row, 'event'))}) VALUES ({marks})"),
            row | {"event": "held", "recipient": "q@gmail.com"},
        )
    # The queue's group commit.
    async with queue_writer(services) as w:
        outcome(w, acct, "e3", "c@yahoo.com", ev.CLICKED, E0 + 7002)
    await check_tallies(services, acct.user_id)
    res = await api.call(
        "emailgateway.aggrevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-03-01",
        EndDate="2026-03-31",
        AggregateSize=50,
    )
    counts = {b["key"]: b["doc_count"] for b in res["AggBuckets"]}
    assert (counts["held"], counts["click"], counts["open"]) == (1, 6, 7)
    stats = await api.call(
        "emailgateway.domainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-03-01",
        EndDate="2026-03-31",
    )
    # a clicked and opened again (not new), c clicked for the first time.
    assert (stats["Stats"]["Opened"], stats["Stats"]["Clicked"]) == (3, 2)


async def test_a_script_with_its_own_connection_is_counted(
    services: Services, engaged: Engaged
) -> None:
    """Events written around the relay (a script's own connection): PostgreSQL's trigger counts
    them as they go; on SQLite the trigger notes them and the next fold (the maintenance
    task's) counts them, once."""
    db = services.db
    acct = engaged.acct
    rows = [
        (E0 + 9000, acct.user_id, acct.domain_id, "f1", "x@gmail.com", ev.DELIVERED),
        (E0 + 9001, acct.user_id, acct.domain_id, "f1", "x@gmail.com", ev.DELIVERED),
    ]
    columns = "created_at, user_id, domain_id, message_id, recipient, event"
    url = make_url(db.url)
    if db.is_sqlite:
        assert url.database
        raw = sqlite3.connect(url.database, isolation_level=None)
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(f"INSERT INTO events ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
            raw.execute("COMMIT")
            assert raw.execute("SELECT count(*) FROM event_unfolded").fetchone() == (2,)
        finally:
            raw.close()
        assert await eventlog.fold_rollups(db) == 1
        assert await eventlog.fold_rollups(db) == 0  # nothing left, nothing doubled
    else:
        pg = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
        try:
            await pg.executemany(
                f"INSERT INTO events ({columns}) VALUES ($1, $2, $3, $4, $5, $6)", rows
            )
        finally:
            await pg.close()
        await check_tallies(services, acct.user_id)  # before any folding
        await eventlog.fold_rollups(db)
    await check_tallies(services, acct.user_id)


async def test_folding(services: Services, engaged: Engaged) -> None:
    """PostgreSQL: every statement wrote rollup rows of its own; folding merges them into one
    row per key and every count stays the same. (SQLite keeps one row per key already.)"""
    db = services.db
    async with db.read() as conn:
        unfolded = await conn.scalar(text("SELECT count(*) FROM event_counts WHERE seq <> 0"))
    assert (unfolded == 0) is db.is_sqlite
    await check_tallies(services, engaged.acct.user_id)
    await eventlog.fold_rollups(db)
    await eventlog.fold_rollups(db)  # again: nothing left to do, nothing doubled
    async with db.read() as conn:
        for table in ("event_counts", "event_rcpt_domains", "event_tags"):
            assert await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE seq <> 0")) == 0
        dupes = await conn.scalar(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM event_counts "
                "GROUP BY user_id, domain_id, day, event, smtp_code HAVING count(*) > 1) x"
            )
        )
    assert dupes == 0
    await check_tallies(services, engaged.acct.user_id)


async def test_a_foreign_trigger_keeps_working(services: Services, engaged: Engaged) -> None:
    """Another engineer's trigger on events (the webhook outbox) fires on rows of partitions
    made later, and survives partition upkeep and retention."""
    db = services.db
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE foreign_seen (id bigint)"))
        if db.is_sqlite:
            await conn.execute(
                text(
                    "CREATE TRIGGER zz_foreign AFTER INSERT ON events "
                    "BEGIN INSERT INTO foreign_seen VALUES (NEW.id); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION foreign_seen() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN INSERT INTO foreign_seen VALUES (NEW.id); RETURN NULL; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER zz_foreign AFTER INSERT ON events "
                    "FOR EACH ROW EXECUTE FUNCTION foreign_seen()"
                )
            )
    later, old = eventlog.day_of(E0) + 400, eventlog.day_of(E0) - 100
    made = await eventlog.ensure_partitions(db, later, later)
    made += await eventlog.ensure_partitions(db, old, old)
    assert made == (
        [] if db.is_sqlite else [eventlog.partition_name(later), eventlog.partition_name(old)]
    )
    acct = engaged.acct
    async with queue_writer(services) as w:
        outcome(w, acct, None, "x@gmail.com", ev.REJECTED, later * DAY + 60, 550)
    dropped = await eventlog.drop_partitions_before(db, (old + 1) * DAY)
    assert dropped == ([] if db.is_sqlite else [eventlog.partition_name(old)])
    await eventlog.delete_events_before(db, at("2026-03-01 00:00:00"))
    async with queue_writer(services) as w:
        outcome(w, acct, None, "y@gmail.com", ev.REJECTED, later * DAY + 61, 550)
    async with db.read() as conn:
        seen = await conn.scalar(text("SELECT count(*) FROM foreign_seen"))
        counted = await conn.scalar(
            select(func.sum(t.event_counts.c.n)).where(
                t.event_counts.c.day == later, t.event_counts.c.event == ev.REJECTED
            )
        )
    assert seen == 2
    assert counted == 2
