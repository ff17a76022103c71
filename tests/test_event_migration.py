"""Migration 0003 on a database that already has events: every event kept with its id, counted
in the rollups as if the triggers had seen it written, and new ids continue after the old."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text

from relay.store import eventlog, migrate, rollups
from relay.store import schema as t
from relay.store.db import Database
from relay.store.repos import events as repo
from tests.conftest import PG_ADMIN_URL, _pg_exec

DAY = eventlog.DAY


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def blank_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}")
        yield db
        await db.close()
        return
    name = f"relay_mig_{uuid.uuid4().hex[:12]}"
    try:
        await _pg_exec(f'CREATE DATABASE "{name}"')
    except OSError as exc:
        pytest.skip(f"PostgreSQL not reachable ({exc})")
    db = Database(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    try:
        yield db
    finally:
        await db.close()
        await _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_upgrade_keeps_and_counts_existing_events(blank_db: Database) -> None:
    db = blank_db
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(migrate._config(c), "0001"))
    now = time.time()
    old = now - 40 * DAY
    async with db.engine.begin() as conn:
        await conn.execute(
            t.messages.insert(),
            [
                {
                    "id": mid,
                    "user_id": 1,
                    "domain_id": 1,
                    "source": "smtp",
                    "mail_from": "a@example.com",
                    "size": 10,
                    "created_at": at,
                    "subject": "Hello",
                }
                for mid, at in (("old", old), ("new", now - 60))
            ],
        )
        rows = [
            (old, "old", "accepted", 250, {"tags": ["t"]}),
            (old + 2, "old", "delivered", 250, {"seconds": 2}),
            (old + 90, "old", "opened", None, None),
            (old + 95, "old", "opened", None, None),
            (now - 60, "new", "accepted", 250, None),
            (now - 55, "new", "bounced", 550, None),
        ]
        await conn.execute(
            text(
                "INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, "
                "event, smtp_code, data) VALUES (:at, 1, 1, :mid, 'x@gmail.com', :event, "
                ":code, :data)"
            ),
            [
                {"at": at, "mid": mid, "event": e, "code": c, "data": json.dumps(d) if d else None}
                for at, mid, e, c, d in rows
            ],
        )
        before = [
            tuple(r)
            for r in (await conn.execute(text("SELECT id, event FROM events ORDER BY id"))).all()
        ]
    await migrate.upgrade(db)
    async with db.read() as conn:
        after = [
            tuple(r)
            for r in (await conn.execute(text("SELECT id, event FROM events ORDER BY id"))).all()
        ]
        found = await repo.tally(conn, repo.EventQuery(1), ("event",))
        tags = await repo.tag_counts(
            conn, 1, eventlog.day_of(old), eventlog.day_of(now) + 1, ("accepted", "delivered")
        )
        if not db.is_sqlite:
            names = [p.name for p in await eventlog.pg_partitions(conn)]
            assert any(n.startswith("events_before_") for n in names), names
    assert after == before
    assert {k[0]: (v.n, v.uniq) for k, v in found.items()} == {
        "accepted": (2, 2),
        "delivered": (1, 1),
        "opened": (2, 1),
        "bounced": (1, 1),
    }
    assert tags == {("t", "accepted"): 1, ("t", "delivered"): 1}
    async with db.write() as conn:
        await conn.execute(
            t.events.insert().values(
                created_at=now,
                user_id=1,
                domain_id=1,
                event="opened",
                message_id="old",
                recipient="x@gmail.com",
            )
        )
        newest = await conn.scalar(select(t.events.c.id).order_by(t.events.c.id.desc()).limit(1))
    assert newest is not None and newest > max(i for i, _ in before)


async def test_downgrade_and_upgrade_again(blank_db: Database) -> None:
    db = blank_db
    await migrate.upgrade(db)
    async with db.write() as conn:
        await conn.execute(
            t.events.insert().values(
                created_at=time.time(), user_id=1, domain_id=1, event="accepted"
            )
        )
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate._config(c), "0001"))
    async with db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM events")) == 1
    await migrate.upgrade(db)
    async with db.read() as conn:
        assert await repo.count(conn, repo.EventQuery(1)) == 1


def test_the_migration_and_the_code_agree() -> None:
    """The triggers' tables are frozen in migration 0003; the queries' copies must match."""
    import importlib.util

    path = migrate.MIGRATIONS / "versions" / "0003_events_at_scale.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.KINDS == eventlog.KINDS
    # SQLite counts with relay/store/rollups.py's statements since migration 0015.
    assert module.KINDS == rollups.KINDS
    assert module.CLASSES == rollups.CLASSES
    assert module.BOUNDS == rollups.BOUNDS
    assert module.RD_COLUMNS == rollups.RD_COLUMNS
    assert module.EVENT_SEARCH == eventlog.EVENT_SEARCH
    assert module.PARTITION_SCHEMA == eventlog.PARTITION_SCHEMA
    assert tuple(module.CLASSES) == t.RCPT_CLASSES
    assert [c for c in module.RD_COLUMNS] == [
        c.name
        for c in t.event_rcpt_domains.c
        if c.name not in ("domain_id", "day", "rcpt_domain", "seq")
    ]
