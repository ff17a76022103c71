"""Examples: webhooks and signing keys."""

from __future__ import annotations

from relay.admin.apidoc import ExampleSession, example

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
