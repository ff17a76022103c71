"""The examples docs/api.md shows: one request per command, run against a fresh node by
``tools.apidoc.generator``. ``setup`` makes the account most examples use: a user logged in
with a session, an Enabled sender domain example.com with an API key, and a small event history in
January 2026 (written through the real queue writer) for the event and statistics examples.

An example is a function registered with ``@example("command.name")`` that may prepare what it
needs with ``ex.call`` (not shown) and then makes exactly one ``ex.show``/``ex.show_route``
request, the one the document prints. Examples run in document order on one database.
"""

from __future__ import annotations

import datetime as dt

from relay import events
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewEvent, NewMessage
from tools.apidoc.examples import (  # noqa: F401  (registers the examples)
    accounts,
    delivery,
    domains,
    eventlog,
    queue,
    sending,
    webhooks,
)
from tools.apidoc.generator import ExampleSession

OWNER = "owner@example.com"
OWNER_PASSWORD = "correct horse battery staple"  # noqa: S105  (the examples' throwaway account)


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


async def setup(ex: ExampleSession) -> None:
    made = await ex.call(
        "user.create", auth="admin", EmailAddress=OWNER, Name="Owner", Password=OWNER_PASSWORD
    )
    ex.user_id, ex.user_key = made["UserID"], made["APIKey"]
    login = await ex.call("user.login", auth="none", EmailAddress=OWNER, Password=OWNER_PASSWORD)
    ex.session_id = login["SessionID"]
    domain = await ex.call("emailgateway.adddomain", DomainName="example.com")
    ex.domain_id, ex.domain = domain["NewSenderDomainID"], "example.com"
    await ex.call(
        "emailgateway.setdomainstatus", auth="admin", DomainID=ex.domain_id, Status="Enabled"
    )
    key = await ex.call(
        "emailgateway.addapi", DomainID=ex.domain_id, Description="Public API examples"
    )
    ex.sender_key = key["APIKey"]["APIKey"]
    await _history(ex)


async def _history(ex: ExampleSession) -> None:
    """A few messages in January 2026: delivered, bounced, deferred then delivered, refused."""
    writer = QueueWriter(ex.services.db)
    await writer.start()
    user, domain = ex.user_id, ex.domain_id

    async def message(mid: str, rcpts: list[str], at: str, subject: str, tags: list[str]) -> None:
        await writer.submit(
            NewMessage(
                id=mid,
                user_id=user,
                domain_id=domain,
                source="api",
                mail_from="sender@example.com",
                recipients=rcpts,
                body=b"Subject: example\r\n\r\nexample\r\n",
                header_from="Apex <sender@example.com>",
                subject=subject,
                message_id_header=f"<{mid}@example.com>",
                client_ip="192.0.2.10",
                created_at=_at(at),
                tags=tags,
            )
        )

    def outcome(mid: str | None, rcpt: str, event: str, at: str, code: int, text: str) -> None:
        writer.record(
            NewEvent(
                user_id=user,
                domain_id=domain,
                event=event,
                recipient=rcpt,
                message_id=mid,
                smtp_code=code,
                smtp_response=text,
                created_at=_at(at),
            )
        )

    try:
        welcome = "bb1a701c-dcf0-4948-81eb-62726da0d67d"
        await message(
            welcome,
            ["recipient@gmail.com", "recipient2@example.org"],
            "2026-01-31 18:42:07",
            "Welcome to Apex",
            ["welcome"],
        )
        outcome(
            welcome,
            "recipient@gmail.com",
            events.DELIVERED,
            "2026-01-31 18:42:09",
            250,
            "250 2.0.0 OK",
        )
        outcome(
            welcome,
            "recipient2@example.org",
            events.BOUNCED,
            "2026-01-31 18:42:11",
            550,
            "550 5.1.1 The email account that you tried to reach does not exist",
        )
        receipt = "162a101e-0c78-491a-9403-94dad8a3e1ca"
        await message(receipt, ["buyer@gmail.com"], "2026-01-20 09:00:00", "Your receipt", [])
        outcome(
            receipt,
            "buyer@gmail.com",
            events.DEFERRED,
            "2026-01-20 09:00:01",
            421,
            "421 4.7.0 Try again later",
        )
        outcome(
            receipt, "buyer@gmail.com", events.DELIVERED, "2026-01-20 09:04:00", 250, "250 2.0.0 OK"
        )
        outcome(
            None,
            "blocked@yahoo.com",
            events.REJECTED,
            "2026-01-21 10:00:00",
            550,
            "550 5.7.1 Recipient is on the suppression list",
        )
        december = "0f6c3ad2-5b9e-4a51-9d4c-7a0e2c1b9e10"
        await message(december, ["old@gmail.com"], "2025-12-15 12:00:00", "December news", [])
        outcome(
            december, "old@gmail.com", events.DELIVERED, "2025-12-15 12:00:02", 250, "250 2.0.0 OK"
        )
    finally:
        await writer.stop()
