"""Examples: queue control (two messages to a slow domain, waiting in the queue)."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import update

from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.store import schema
from tools.apidoc.generator import ExampleSession, example

SLOW = "slow.example.net"
NEWSLETTER = "3f2b8c1e-7d4a-4e5b-9c6d-1a2b3c4d5e6f"
INVOICE = "8e7d6c5b-4a39-4281-9f0e-d1c2b3a4f5e6"


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


async def _queue(ex: ExampleSession) -> None:
    """Two messages for SLOW: the newsletter's recipients deferred twice (greylisting), the
    invoice's held by the admin."""
    writer = QueueWriter(ex.services.db)
    await writer.start()
    try:
        for mid, rcpts, at, subject in (
            (NEWSLETTER, [f"ann@{SLOW}", f"bob@{SLOW}"], "2026-05-16 03:50:00", "May news"),
            (INVOICE, [f"accounts@{SLOW}"], "2026-05-16 04:10:00", "Invoice 1042"),
        ):
            await writer.submit(
                NewMessage(
                    id=mid,
                    user_id=ex.user_id,
                    domain_id=ex.domain_id,
                    source="api",
                    mail_from="sender@example.com",
                    recipients=rcpts,
                    body=f"Subject: {subject}\r\n\r\n{subject}\r\n".encode(),
                    header_from="Apex <sender@example.com>",
                    subject=subject,
                    message_id_header=f"<{mid}@example.com>",
                    client_ip="192.0.2.10",
                    created_at=_at(at),
                )
            )
    finally:
        await writer.stop()
    r = schema.recipients
    async with ex.services.db.write() as conn:
        await conn.execute(
            update(r)
            .where(r.c.message_id == NEWSLETTER)
            .values(
                state="deferred",
                attempts=2,
                next_attempt_at=_at("2026-05-16 04:35:00"),
                last_code=451,
                last_response="451 4.7.1 Greylisted, please try again later",
                updated_at=_at("2026-05-16 04:05:00"),
            )
        )
        await conn.execute(update(r).where(r.c.message_id == INVOICE).values(state="held"))


@example("queue.list")
async def queue_list(ex: ExampleSession) -> None:
    await _queue(ex)
    await ex.show("queue.list", "admin", RecipientDomain=SLOW, RetrieveCount=2)


@example("queue.retry")
async def queue_retry(ex: ExampleSession) -> None:
    # Their next attempt still ahead, as it is when an operator wants them tried now.
    r = schema.recipients
    async with ex.services.db.write() as conn:
        await conn.execute(
            update(r).where(r.c.message_id == NEWSLETTER).values(next_attempt_at=time.time() + 3600)
        )
    await ex.show("queue.retry", "admin", RecipientDomain=SLOW, State="deferred")


@example("queue.hold")
async def queue_hold(ex: ExampleSession) -> None:
    await ex.show("queue.hold", "admin", MessageID=NEWSLETTER)


@example("queue.release")
async def queue_release(ex: ExampleSession) -> None:
    await ex.show("queue.release", "admin", RecipientDomain=SLOW)


@example("queue.delete")
async def queue_delete(ex: ExampleSession) -> None:
    await ex.show("queue.delete", "admin", MessageID=INVOICE)
