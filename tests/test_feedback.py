"""The feedback path: events, suppressions and dedupe keys for what comes back about a message,
on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from relay.queue.feedback import Feedback, FeedbackWriter
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import suppressed


async def _queue(services: Services, mid: str, rcpts: list[str]) -> None:
    writer = QueueWriter(services.db)
    await writer.start()
    try:
        await writer.submit(
            NewMessage(
                id=mid,
                user_id=7,
                domain_id=3,
                source="smtp",
                mail_from="app@example.com",
                recipients=rcpts,
                body=b"Subject: x\r\n\r\nhi\r\n",
            )
        )
    finally:
        await writer.stop()


async def _events(services: Services, mid: str) -> list[Any]:
    e = t.events
    async with services.db.read() as conn:
        rows = await conn.execute(
            select(e.c.event, e.c.recipient, e.c.user_id, e.c.domain_id, e.c.smtp_code, e.c.data)
            .where(e.c.message_id == mid, e.c.event != "accepted")
            .order_by(e.c.id)
        )
        return list(rows.all())


@pytest.fixture
async def writer(services: Services) -> Any:
    w = FeedbackWriter(services.db, services.bus)
    w.start()
    yield w
    await w.stop()


async def test_records_events_with_the_message_account(services: Services, writer: Any) -> None:
    await _queue(services, "m-1", ["A@Example.net", "b@example.net"])
    done = await writer.record(
        [
            Feedback("m-1", "a@example.net", "opened", data={"ip": "127.0.0.1"}),
            Feedback("m-1", "b@example.net", "clicked", data={"URL": "https://x.test/"}),
            Feedback("m-1", "nobody@example.net", "opened"),  # not a recipient
            Feedback("m-unknown", "a@example.net", "opened"),  # not a message
        ]
    )
    assert done == [True, True, False, False]
    rows = await _events(services, "m-1")
    assert [(r.event, r.recipient, r.user_id, r.domain_id) for r in rows] == [
        ("opened", "A@Example.net", 7, 3),
        ("clicked", "b@example.net", 7, 3),
    ]
    assert rows[1].data == {"URL": "https://x.test/"}


async def test_suppressing_feedback_suppresses_and_invalidates(
    services: Services, writer: Any
) -> None:
    await _queue(services, "m-2", ["x@example.net"])
    # Cached "not suppressed" answer first: the commit must invalidate it.
    assert await services.directory.suppression(7, "x@example.net") is None
    done = await writer.record(
        [
            Feedback(
                "m-2",
                "X@example.net",
                "bounced",
                smtp_code=550,
                smtp_response="550 5.1.1 no such user",
                suppress="bounce",
                suppress_reason="550 5.1.1 no such user",
            )
        ]
    )
    assert done == [True]
    assert [r.event for r in await _events(services, "m-2")] == ["bounced", "suppressed"]
    assert await services.directory.suppression(7, "x@example.net") is not None
    s = t.suppressions
    async with services.db.read() as conn:
        row = (await conn.execute(select(s.c.email, s.c.source, s.c.reason))).one()
    assert tuple(row) == ("x@example.net", "bounce", "550 5.1.1 no such user")
    # Again (another report for the same address): still one row, source updated.
    assert await writer.record(
        [Feedback("m-2", "x@example.net", "complained", suppress="complaint")]
    )
    async with services.db.read() as conn:
        rows = (await conn.execute(select(s.c.email, s.c.source))).all()
    assert [tuple(r) for r in rows] == [("x@example.net", "complaint")]


async def test_a_batch_records_in_item_order_with_each_suppression_after_its_event(
    services: Services, writer: Any
) -> None:
    """One batch of mixed items (both backends record a batch set-based): events in item
    order, each suppressed event right after its item's, addresses lowered as Python does."""
    await _queue(services, "m-5", ["Ünï@Example.net", "ok@example.net", "gone@example.net"])
    done = await writer.record(
        [
            Feedback("m-5", "ok@example.net", "accepted-by-mta", dedupe_key="b:1"),
            # (Matching folds ASCII case only on SQLite: the report names it as queued.)
            Feedback("m-5", "Ünï@Example.net", "bounced", suppress="bounce", dedupe_key="b:2"),
            Feedback("m-5", "nobody@example.net", "bounced", suppress="bounce"),
            Feedback("m-5", "GONE@example.net", "complained", suppress="complaint"),
            Feedback("m-5", "ok@example.net", "deferred", dedupe_key="b:3"),
        ]
    )
    assert done == [True, True, False, True, True]
    rows = await _events(services, "m-5")
    assert [(r.event, r.recipient) for r in rows] == [
        ("accepted-by-mta", "ok@example.net"),
        ("bounced", "Ünï@Example.net"),
        ("suppressed", "Ünï@Example.net"),
        ("complained", "gone@example.net"),
        ("suppressed", "gone@example.net"),
        ("deferred", "ok@example.net"),
    ]
    assert [r.data for r in rows if r.event == "suppressed"] == [
        {"source": "bounce"},
        {"source": "complaint"},
    ]
    assert await suppressed(services) == [
        ("gone@example.net", "complaint"),
        ("ünï@example.net", "bounce"),
    ]


async def test_dedupe_keys_record_once_across_batches_and_within_one(
    services: Services, writer: Any
) -> None:
    await _queue(services, "m-3", ["y@example.net"])
    first = await writer.record(
        [
            Feedback("m-3", "y@example.net", "delivered", dedupe_key="acct:1"),
            Feedback("m-3", "y@example.net", "delivered", dedupe_key="acct:1"),
            Feedback("m-3", "y@example.net", "deferred", dedupe_key="k" * 500),
        ]
    )
    assert first == [True, False, True]
    again = await writer.record(
        [
            Feedback("m-3", "y@example.net", "delivered", dedupe_key="acct:1"),
            Feedback("m-3", "y@example.net", "deferred", dedupe_key="k" * 500),
            Feedback("m-3", "y@example.net", "deferred", dedupe_key="acct:2"),
        ]
    )
    assert again == [False, False, True]
    assert [r.event for r in await _events(services, "m-3")] == [
        "delivered",
        "deferred",
        "deferred",
    ]
    # An unknown message does not use up its key.
    assert await writer.record([Feedback("m-none", "y@example.net", "x", dedupe_key="acct:3")]) == [
        False
    ]
    await _queue(services, "m-none", ["y@example.net"])
    assert await writer.record([Feedback("m-none", "y@example.net", "x", dedupe_key="acct:3")]) == [
        True
    ]


async def test_concurrent_callers_share_commits(services: Services, writer: Any) -> None:
    import asyncio

    await _queue(services, "m-4", ["z@example.net"])
    results = await asyncio.gather(
        *(writer.record([Feedback("m-4", "z@example.net", "opened")]) for _ in range(50))
    )
    assert results == [[True]] * 50
    assert len(await _events(services, "m-4")) == 50


async def test_enqueue_commits_without_waiting(services: Services, writer: Any) -> None:
    await _queue(services, "m-5", ["w@example.net"])
    writer.enqueue([Feedback("m-5", "w@example.net", "opened")])
    await writer.stop()  # commits what is pending
    assert [r.event for r in await _events(services, "m-5")] == ["opened"]


async def test_unknown_suppression_source_is_refused(writer: Any) -> None:
    with pytest.raises(ValueError):
        await writer.record([Feedback("m", "a@b.c", "x", suppress="whim")])
