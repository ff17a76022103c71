"""Examples: webhooks, signing keys and delivery history."""

from __future__ import annotations

import datetime as dt

from tools.apidoc.generator import ExampleSession, example

HOOK = "https://example.com/webhooks/email-events"


@example("emailgateway.addwebhook")
async def addwebhook(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.addwebhook", DomainID=ex.domain_id, Event="delivery", WebhookURL=HOOK
    )


@example("emailgateway.getwebhooks")
async def getwebhooks(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getwebhooks", DomainID=ex.domain_id)


@example("emailgateway.deletewebhook")
async def deletewebhook(ex: ExampleSession) -> None:
    made = await ex.call(
        "emailgateway.addwebhook",
        DomainID=ex.domain_id,
        Event="bounce",
        WebhookURL="https://example.com/webhooks/old",
    )
    await ex.show(
        "emailgateway.deletewebhook", WebhookID=made["NewWebhookID"], DomainID=ex.domain_id
    )


@example("emailgateway.regeneratesigningkey")
async def regeneratesigningkey(ex: ExampleSession) -> None:
    await ex.show("emailgateway.regeneratesigningkey", DomainID=ex.domain_id)


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@example("emailgateway.getwebhookdeliveries")
async def getwebhookdeliveries(ex: ExampleSession) -> None:
    """A bounce posted twice: the endpoint answered 503, then 200 on the retry. The event goes
    through the real outbox trigger and the attempts through the worker's own store."""
    from sqlalchemy import update

    from relay import events
    from relay.queue.ingest import QueueWriter
    from relay.queue.model import NewEvent
    from relay.store import schema as t
    from relay.webhooks.sender import DELIVERED, HTTP_ERROR, Attempted
    from relay.webhooks.store import PENDING, Recorded, open_store

    made = await ex.call(
        "emailgateway.addwebhook",
        DomainID=ex.domain_id,
        Event="bounce",
        WebhookURL="https://example.com/webhooks/bounces",
    )
    writer = QueueWriter(ex.services.db)
    await writer.start()
    writer.record(
        NewEvent(
            user_id=ex.user_id,
            domain_id=ex.domain_id,
            event=events.BOUNCED,
            recipient="recipient2@example.org",
            message_id="bb1a701c-dcf0-4948-81eb-62726da0d67d",
            smtp_code=550,
            smtp_response="550 5.1.1 The email account that you tried to reach does not exist",
            created_at=_at("2026-01-31 18:42:11"),
        )
    )
    await writer.stop()
    d = t.webhook_deliveries
    async with ex.services.db.write() as conn:  # a fixed webhook-id for a stable document
        await conn.execute(
            update(d)
            .where(d.c.webhook_id == made["NewWebhookID"])
            .values(msg_id="msg_7d3f0c2a9b1e4f6a8c5d2e1f0a9b8c7d")
        )
    store = open_store(ex.services.db)
    try:
        (delivery,) = await store.claim("example", _at("2026-01-31 18:43:12"), 2e9, 10, {}, 10)
        first = Attempted(HTTP_ERROR, 503, 0.042, "HTTP 503", "Service Unavailable")
        retry_at = _at("2026-01-31 18:42:42")
        await store.record(
            "example",
            [Recorded(delivery, first, 1, PENDING, retry_at, _at("2026-01-31 18:42:12"))],
        )
        (delivery,) = await store.claim("example", _at("2026-01-31 18:43:43"), 2e9, 10, {}, 10)
        second = Attempted(DELIVERED, 200, 0.018, "", "ok")
        await store.record(
            "example", [Recorded(delivery, second, 2, "delivered", retry_at, retry_at)]
        )
    finally:
        await store.close()
    await ex.show(
        "emailgateway.getwebhookdeliveries",
        DomainID=ex.domain_id,
        WebhookID=made["NewWebhookID"],
        RetrieveCount=10,
    )


@example("emailgateway.addwebhook.public")
async def addwebhook_public(ex: ExampleSession) -> None:
    await ex.show_route(
        "POST",
        "/api/v1/webhooks",
        key=ex.sender_key,
        body={"Event": "delivered", "WebhookURL": HOOK},
    )


@example("emailgateway.getwebhooks.public")
async def getwebhooks_public(ex: ExampleSession) -> None:
    await ex.show_route("GET", "/api/v1/webhooks", key=ex.sender_key)


@example("emailgateway.deletewebhook.public")
async def deletewebhook_public(ex: ExampleSession) -> None:
    made = await ex.call(
        "emailgateway.addwebhook",
        DomainID=ex.domain_id,
        Event="complaint",
        WebhookURL="https://example.com/webhooks/complaints",
    )
    await ex.show_route(
        "DELETE", "/api/v1/webhooks", key=ex.sender_key, body={"WebhookID": made["NewWebhookID"]}
    )
