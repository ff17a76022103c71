"""Accounts, domains and keys made through the API itself, and events through the queue writer
(the same code the SMTP and delivery sides use), for the management API's tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from relay.queue.ingest import QueueWriter
from relay.queue.model import NewEvent, NewMessage
from relay.services import Services
from relay.store import schema as t
from tests.conftest import Api
from tests.provision import Account, make_account, make_domain, make_user

__all__ = ["Account", "make_account", "make_domain", "make_user"]  # tests/provision.py's


async def sender_key(api: Api, acct: Account, description: str = "test key") -> str:
    res = await api.call(
        "emailgateway.addapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description=description
    )
    assert res["Success"] is True, res
    return str(res["APIKey"]["APIKey"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def queue_writer(services: Services) -> AsyncIterator[QueueWriter]:
    """The real group-commit writer; everything submitted or recorded is committed on exit."""
    writer = QueueWriter(services.db)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()


async def accept(
    writer: QueueWriter,
    acct: Account,
    message_id: str,
    recipients: list[str],
    at: float,
    *,
    subject: str = "Test Email",
    sender: str | None = None,
    tags: list[str] | None = None,
) -> None:
    sender = sender or f"sender@{acct.domain}"
    await writer.submit(
        NewMessage(
            id=message_id,
            user_id=acct.user_id,
            domain_id=acct.domain_id,
            source="smtp",
            mail_from=sender,
            recipients=recipients,
            body=b"Subject: x\r\n\r\nbody\r\n",
            header_from=sender,
            subject=subject,
            message_id_header=f"<{message_id}@relay.test>",
            client_ip="127.0.0.1",
            created_at=at,
            tags=tags or [],
        )
    )


def outcome(
    writer: QueueWriter,
    acct: Account,
    message_id: str | None,
    recipient: str,
    event: str,
    at: float,
    code: int | None = None,
    response: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    writer.record(
        NewEvent(
            user_id=acct.user_id,
            domain_id=acct.domain_id,
            event=event,
            recipient=recipient,
            message_id=message_id,
            smtp_code=code,
            smtp_response=response,
            data=data,
            created_at=at,
        )
    )


async def suppressed(services: Services) -> list[tuple[str, str]]:
    """(email, source) of every suppression, by email."""
    s = t.suppressions
    async with services.db.read() as conn:
        rows = await conn.execute(select(s.c.email, s.c.source).order_by(s.c.email))
        return [(r.email, r.source) for r in rows]
