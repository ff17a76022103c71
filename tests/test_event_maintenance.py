"""Keeping the event log in shape: daily partitions made ahead (PostgreSQL), rows the DEFAULT
partition caught moved into their day, retention (partitions dropped whole; rows deleted in
batches on SQLite and where no partition of their own holds them), never waiting on a lock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from relay import config
from relay import events as ev
from relay.event_maintenance import EventMaintenance
from relay.services import Services
from relay.store import eventlog
from relay.store import schema as t
from relay.store.eventlog import DAY, PARTITION_SCHEMA
from relay.store.repos import events as repo
from tests.apihelpers import Account, accept, make_account, outcome, queue_writer
from tests.conftest import Api
from tests.relayfix import start_relay, stop_relay

TODAY = eventlog.day_of(time.time())


async def partitions(services: Services) -> list[str]:
    async with services.db.read() as conn:
        return [p.name for p in await eventlog.pg_partitions(conn)]


async def rows_in(services: Services, table: str) -> int:
    async with services.db.read() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def total(services: Services, acct: Account) -> int:
    async with services.db.read() as conn:
        return await repo.count(conn, repo.EventQuery(acct.user_id))


async def test_partitions_are_made_ahead(services: Services) -> None:
    db = services.db
    later = TODAY + 40
    maint = EventMaintenance(
        db, config.EventsSettings(partitions_ahead_days=3), clock=lambda: later * DAY + 5
    )
    made = await maint.make_partitions()
    if db.is_sqlite:
        assert made == []
        return
    assert made == [eventlog.partition_name(d) for d in range(later, later + 4)]
    assert set(made) <= set(await partitions(services))
    assert await maint.make_partitions() == []  # already there


async def test_default_partition_rows_move_into_their_day(api: Api, services: Services) -> None:
    db = services.db
    acct = await make_account(api)
    far = TODAY + 200
    async with queue_writer(services) as w:
        outcome(w, acct, None, "x@gmail.com", ev.REJECTED, far * DAY + 30, 550)
    if not db.is_sqlite:
        assert await rows_in(services, f"{PARTITION_SCHEMA}.events_default") == 1
        assert await eventlog.ensure_partitions(db, far, far) == [eventlog.partition_name(far)]
        assert await rows_in(services, f"{PARTITION_SCHEMA}.events_default") == 0
        name = eventlog.partition_name(far)
        assert await rows_in(services, f"{PARTITION_SCHEMA}.{name}") == 1
    # Moving rows between partitions counts nothing twice.
    assert await total(services, acct) == 1
    async with db.read() as conn:
        n = await conn.scalar(
            select(func.sum(t.event_counts.c.n)).where(t.event_counts.c.day == far)
        )
    assert n == 1


async def seed_old_and_new(api: Api, services: Services) -> tuple[Account, float]:
    """Events 200 and 95 days ago (past 90 days' retention) and 10 days ago; returns the
    account and the retention cutoff."""
    db = services.db
    acct = await make_account(api)
    days = (TODAY - 200, TODAY - 95, TODAY - 10)
    if not db.is_sqlite:
        # The 95-day-old events get a partition of their own; the others land in the DEFAULT
        # partition (200 days ago) or today's neighbours.
        await eventlog.ensure_partitions(db, days[1], days[1])
        await eventlog.ensure_partitions(db, days[2], days[2])
    async with queue_writer(services) as w:
        for i, day in enumerate(days):
            at = day * DAY + 3600
            await accept(w, acct, f"m{i}", ["a@gmail.com", "b@yahoo.com"], at, tags=["t"])
            outcome(w, acct, f"m{i}", "a@gmail.com", ev.DELIVERED, at + 5, 250, "250 ok")
            outcome(w, acct, f"m{i}", "a@gmail.com", ev.OPENED, at + 50)
    return acct, float((TODAY - 90) * DAY)


async def test_retention(api: Api, services: Services) -> None:
    db = services.db
    acct, cutoff = await seed_old_and_new(api, services)
    assert await total(services, acct) == 12
    maint = EventMaintenance(db, config.EventsSettings(retention_days=90))
    assert maint.cutoff() == cutoff
    done = await maint.apply_retention()
    if db.is_sqlite:
        assert done["dropped"] == [] and done["deleted"] == 8
    else:
        assert done["dropped"] == [eventlog.partition_name(TODAY - 95)]
        assert done["deleted"] == 4  # the DEFAULT partition's
        assert eventlog.partition_name(TODAY - 10) in await partitions(services)
    assert await total(services, acct) == 4
    async with db.read() as conn:
        for table in eventlog.ROLLUP_TABLES:
            oldest = await conn.scalar(text(f"SELECT min(day) FROM {table}"))
            assert oldest == TODAY - 10, table
        for table in eventlog.DATED_TABLES:
            assert await conn.scalar(text(f"SELECT min(created_at) FROM {table}")) >= cutoff
        if not db.is_sqlite:
            oldest = await conn.scalar(
                text(f"SELECT min(created_at) FROM {PARTITION_SCHEMA}.message_search")
            )
            assert oldest >= cutoff
    # Statistics over the old days are gone with their events; the recent ones stay.
    since = (TODAY - 11) * DAY
    async with db.read() as conn:
        found = await repo.tally(conn, repo.EventQuery(acct.user_id, since=since), ("event",))
    assert {k[0]: v.n for k, v in found.items()} == {"accepted": 2, "delivered": 1, "opened": 1}
    assert (await maint.apply_retention())["deleted"] == 0  # nothing left to do


async def test_sqlite_deletes_in_small_batches(api: Api, services: Services) -> None:
    db = services.db
    acct, cutoff = await seed_old_and_new(api, services)
    if not db.is_sqlite:
        pytest.skip("batches of the DEFAULT partition: test_retention")
    assert await eventlog.delete_events_before(db, cutoff, batch=3) == 8
    assert await eventlog.delete_bookkeeping_before(db, cutoff, batch=1) > 0
    assert await total(services, acct) == 4


async def test_retention_zero_keeps_everything(api: Api, services: Services) -> None:
    acct, _ = await seed_old_and_new(api, services)
    maint = EventMaintenance(services.db, config.EventsSettings(retention_days=0))
    assert maint.cutoff() is None
    assert await maint.apply_retention() == {}
    assert await total(services, acct) == 12


async def test_dropping_never_waits_on_a_lock(api: Api, services: Services, pg_url: str) -> None:
    """A reader in the middle of a long transaction on an old partition: the drop gives up
    within its lock timeout (writers queued behind it would wait no longer) and succeeds at
    the next round."""
    import asyncpg

    db = services.db
    if db.is_sqlite:
        pytest.skip("PostgreSQL partitions")
    acct, cutoff = await seed_old_and_new(api, services)
    dsn = str(db.engine.url.set(drivername="postgresql"))
    reader = await asyncpg.connect(dsn)
    try:
        tx = reader.transaction()
        await tx.start()
        await reader.fetch(
            f"SELECT count(*) FROM {PARTITION_SCHEMA}.{eventlog.partition_name(TODAY - 95)}"
        )
        with pytest.raises(Exception, match="lock timeout"):
            await asyncio.wait_for(eventlog.drop_partitions_before(db, cutoff), 60)
        await tx.commit()
    finally:
        await reader.close()
    assert await eventlog.drop_partitions_before(db, cutoff) == [
        eventlog.partition_name(TODAY - 95)
    ]
    del acct


async def test_the_relay_runs_it(tmp_path: Path, db_url: str) -> None:
    running, session = await start_relay(tmp_path, db_url, RELAY_EVENTS_PARTITIONS_AHEAD_DAYS="2")
    try:
        maint = running.relay.event_maintenance
        assert maint is not None and maint.settings.partitions_ahead_days == 2
        services: Any = running.relay.services
        if not services.db.is_sqlite:
            names = set(await partitions(services))
            assert {eventlog.partition_name(d) for d in range(TODAY, TODAY + 3)} <= names
    finally:
        await stop_relay(running, session)
    assert running.relay.event_maintenance is not None
    assert running.relay.event_maintenance._task is None
