"""The queue backend on SQLite and PostgreSQL: scheduled messages, per-recipient bodies, storage
errors, and the management side (relay/queue/control.py). Delivery through real SMTP is in
test_delivery.py; these look at the rows."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from relay import events
from relay.queue import control
from relay.queue.backend import QueueBackend, open_backend
from relay.queue.ingest import QueueWriter
from relay.queue.model import (
    DEFERRED,
    DELIVERED,
    SCHEDULED,
    DeliveryOutcome,
    NewEvent,
    NewMessage,
    shown_state,
)
from relay.services import Services
from relay.store import schema as t
from relay.store.db import SqliteRunner, StorageUnavailable

BODY = b"Subject: shared\r\n\r\nthe shared body\r\n"


def message(rcpts: list[str], **kwargs: Any) -> NewMessage:
    return NewMessage(
        id=str(uuid.uuid4()),
        user_id=7,
        domain_id=3,
        source="api",
        mail_from="app@example.com",
        recipients=rcpts,
        body=kwargs.pop("body", BODY),
        **kwargs,
    )


@pytest.fixture
async def writer(services: Services) -> AsyncIterator[QueueWriter]:
    w = QueueWriter(services.db)
    await w.start()
    yield w
    await w.stop()


@pytest.fixture
async def queue(services: Services) -> AsyncIterator[QueueBackend]:
    q = open_backend(services.db, "test-queue")
    yield q
    await q.close()


async def recipient_rows(services: Services, message_id: str) -> dict[str, Any]:
    r = t.recipients
    async with services.db.read() as conn:
        rows = (await conn.execute(select(r).where(r.c.message_id == message_id))).all()
    return {row.rcpt: row for row in rows}


async def message_row(services: Services, message_id: str) -> Any:
    m = t.messages
    async with services.db.read() as conn:
        return (await conn.execute(select(m).where(m.c.id == message_id))).one()


def delivered(claimed: Any, msg: NewMessage) -> DeliveryOutcome:
    return DeliveryOutcome(
        recipient_id=claimed.id,
        message_id=msg.id,
        user_id=msg.user_id,
        domain_id=msg.domain_id,
        rcpt=claimed.rcpt,
        state=DELIVERED,
        event=events.DELIVERED,
        attempts=1,
        next_attempt_at=time.time(),
        code=250,
        response="250 2.0.0 Ok",
    )


# -- scheduled sending (not_before) ------------------------------------------------------------


async def test_a_scheduled_message_is_due_at_its_time_not_before(
    services: Services, writer: QueueWriter, queue: QueueBackend
) -> None:
    now = time.time()
    later = now + 3600
    scheduled = message(["later@example.net"], not_before=later, created_at=now)
    at_once = message(["now@example.net"], created_at=now)
    await writer.submit(scheduled)
    await writer.submit(at_once)

    row = (await recipient_rows(services, scheduled.id))["later@example.net"]
    assert (row.state, row.next_attempt_at, row.created_at) == ("queued", later, now)
    assert (await message_row(services, scheduled.id)).not_before == later
    assert (await message_row(services, at_once.id)).not_before is None
    assert shown_state(row.state, row.next_attempt_at, now) == SCHEDULED
    assert shown_state(row.state, row.next_attempt_at, later) == "queued"
    depth = await queue.pending(now)
    assert (depth.pending, depth.scheduled) == (1, 1)

    # The claim takes only what is due: the scheduled recipient not before its time.
    claimed = await queue.claim("node", 10, 7200, now + 1)  # leased past `later`
    assert [c.rcpt for c in claimed] == ["now@example.net"]
    assert await queue.claim("node", 10, 30, later - 1) == []
    (due,) = await queue.claim("node", 10, 30, later)
    assert due.rcpt == "later@example.net"
    (loaded,) = await queue.load([due])
    assert loaded.not_before == later and loaded.due_since == later
    assert (await queue.pending(later)).scheduled == 0


async def test_next_scheduled_is_the_earliest_scheduled_time_still_ahead(
    services: Services, writer: QueueWriter, queue: QueueBackend
) -> None:
    now = time.time()
    assert await queue.next_scheduled(now) is None
    # Due now, and a held scheduled one: neither is a time to wake for.
    await writer.submit(message(["now@example.net"], created_at=now))
    held = message(["held@example.net"], not_before=now + 10, created_at=now)
    await writer.submit(held)
    await control.hold(services.db, control.Selection(message_ids=(held.id,)))
    assert await queue.next_scheduled(now) is None
    await writer.submit(message(["b@example.net"], not_before=now + 200, created_at=now))
    await writer.submit(message(["a@example.net"], not_before=now + 100, created_at=now))
    assert await queue.next_scheduled(now) == now + 100
    assert await queue.next_scheduled(now + 100) == now + 200  # the first is due: claimed next
    assert await queue.next_scheduled(now + 200) is None
    # A deferral's next attempt is a time to wake for too (a retry sooner than the poll).
    (first,) = await queue.claim("node", 1, 30, now)
    retry = DeliveryOutcome(
        recipient_id=first.id,
        message_id=first.message_id,
        user_id=7,
        domain_id=3,
        rcpt=first.rcpt,
        state=DEFERRED,
        event=events.DEFERRED,
        attempts=1,
        next_attempt_at=now + 50,
        code=451,
        response="451 4.3.0 try later",
    )
    await queue.record_outcomes([retry])
    assert await queue.next_scheduled(now) == now + 50


async def test_a_not_before_in_the_past_means_at_once(
    services: Services, writer: QueueWriter, queue: QueueBackend
) -> None:
    now = time.time()
    msg = message(["past@example.net"], not_before=now - 60, created_at=now)
    await writer.submit(msg)
    row = (await recipient_rows(services, msg.id))["past@example.net"]
    assert row.next_attempt_at == now
    assert [c.rcpt for c in await queue.claim("node", 10, 30, now)] == ["past@example.net"]


# -- per-recipient bodies (variants) ------------------------------------------------------------


async def test_variants_are_committed_with_their_recipients_and_dropped_once_final(
    services: Services, writer: QueueWriter, queue: QueueBackend
) -> None:
    variant_b = b"Subject: b\r\n\r\nfor b, tracked\r\n"
    variant_c = b"Subject: c\r\n\r\nfor c, tracked\r\n"
    msg = message(
        ["a@example.net", "b@example.net", "c@example.net"],
        variants={"b@example.net": variant_b, "c@example.net": variant_c},
    )
    await writer.submit(msg)
    rows = await recipient_rows(services, msg.id)
    assert {k: v.body for k, v in rows.items()} == {
        "a@example.net": None,
        "b@example.net": variant_b,
        "c@example.net": variant_c,
    }

    claimed = await queue.claim("node", 10, 30)
    assert {c.rcpt: c.body for c in claimed} == {
        "a@example.net": None,
        "b@example.net": variant_b,
        "c@example.net": variant_c,
    }
    (loaded,) = await queue.load(claimed)
    assert loaded.body == BODY and len(loaded.recipients) == 3

    by_rcpt = {c.rcpt: c for c in claimed}
    # b is final: its own body goes; the message's stays while a and c are pending.
    await queue.record_outcomes([delivered(by_rcpt["b@example.net"], msg)])
    await queue.release("node")
    rows = await recipient_rows(services, msg.id)
    assert rows["b@example.net"].body is None and rows["c@example.net"].body == variant_c
    assert (await message_row(services, msg.id)).body == BODY
    await queue.record_outcomes(
        [delivered(by_rcpt["a@example.net"], msg), delivered(by_rcpt["c@example.net"], msg)]
    )
    rows = await recipient_rows(services, msg.id)
    assert {v.body for v in rows.values()} == {None}
    assert (await message_row(services, msg.id)).body is None


async def test_a_message_of_variants_only_may_have_no_shared_body(
    services: Services, writer: QueueWriter, queue: QueueBackend
) -> None:
    msg = message(["x@example.net"], body=b"", variants={"x@example.net": b"only x\r\n"})
    await writer.submit(msg)
    assert (await message_row(services, msg.id)).size == len(b"only x\r\n")
    (claimed,) = await queue.claim("node", 10, 30)
    assert claimed.body == b"only x\r\n"


async def test_a_variant_for_someone_else_is_refused(writer: QueueWriter) -> None:
    with pytest.raises(ValueError, match="not a recipient"):
        await writer.submit(message(["a@example.net"], variants={"b@example.net": b"x"}))


# -- the management side -------------------------------------------------------------------------


async def test_clearing_a_domain_queue_fails_pending_recipients_and_frees_bodies(
    services: Services, writer: QueueWriter
) -> None:
    msg = message(["a@example.net", "b@example.net"], variants={"b@example.net": b"b only"})
    other_domain = message(["c@example.net"])
    other_domain.domain_id = 4
    await writer.submit(msg)
    await writer.submit(other_domain)
    async with services.db.write() as conn:
        failed = await control.fail_domain_queue(
            conn, domain_id=3, user_id=7, reason="cleared", data={"reason": "queue cleared"}
        )
    assert sorted(f.rcpt for f in failed) == ["a@example.net", "b@example.net"]
    rows = await recipient_rows(services, msg.id)
    assert {(v.state, v.body, v.last_response) for v in rows.values()} == {
        ("failed", None, "cleared")
    }
    assert (await message_row(services, msg.id)).body is None
    assert (await message_row(services, other_domain.id)).body == BODY
    e = t.events
    async with services.db.read() as conn:
        evs = (
            await conn.execute(select(e).where(e.c.event == events.FAILED).order_by(e.c.id))
        ).all()
    assert [(x.recipient, x.smtp_response, x.data) for x in evs] == [
        ("a@example.net", "cleared", {"reason": "queue cleared"}),
        ("b@example.net", "cleared", {"reason": "queue cleared"}),
    ]


# -- the group commit ------------------------------------------------------------------------------


async def test_a_bad_message_does_not_cost_the_batch_its_commit(
    services: Services, writer: QueueWriter
) -> None:
    good = [message([f"g{i}@example.net"]) for i in range(5)]
    duplicate = message(["dup@example.net"])
    duplicate.id = good[0].id  # same primary key: this one alone fails
    results = await asyncio.gather(
        *(writer.submit(m) for m in [*good, duplicate]), return_exceptions=True
    )
    assert results[:5] == [None] * 5
    assert isinstance(results[5], StorageUnavailable)
    for m in good:
        assert list(await recipient_rows(services, m.id)) == m.recipients
    writer.record(NewEvent(user_id=7, domain_id=3, event=events.REJECTED, recipient="r@x.net"))
    await writer.stop()
    e = t.events
    async with services.db.read() as conn:
        rejected = (await conn.execute(select(e).where(e.c.event == events.REJECTED))).all()
    assert [x.recipient for x in rejected] == ["r@x.net"]


# -- storage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_errors_surface_as_storage_unavailable(services: Services) -> None:
    """A locked database (another process holds the write lock past the busy timeout) is a
    storage error like a PostgreSQL outage, not a crash; the runner keeps working after."""
    runner = SqliteRunner(services.db, "test-runner")
    path = services.db.url.split("///", 1)[1]
    try:
        # This runner gives up on a busy database at once (the default waits 30 s).
        await runner.read(lambda conn: conn.execute("PRAGMA busy_timeout=0"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StorageUnavailable, match="database is locked") as caught:
                await runner.write(lambda conn: conn.execute("DELETE FROM feedback_keys"))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await runner.write(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    finally:
        await runner.close()
