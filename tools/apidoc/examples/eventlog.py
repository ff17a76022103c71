"""Examples: events and statistics (over the history ``setup`` writes for January 2026)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from relay.store import schema
from tools.apidoc.generator import ExampleSession, example

JANUARY: dict[str, Any] = {"StartDate": "2026-01-01", "EndDate": "2026-01-31"}


@example("emailgateway.getevents")
async def getevents(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.getevents",
        DomainID=ex.domain_id,
        StartFrom=0,
        RetrieveCount=2,
        Event="delivery",
    )


@example("emailgateway.getevents.public")
async def getevents_public(ex: ExampleSession) -> None:
    await ex.show_route(
        "GET",
        "/api/v1/events",
        key=ex.sender_key,
        query={"StartFrom": "0", "RetrieveCount": "1", "Event": "bounced"},
    )


@example("emailgateway.aggrevents")
async def aggrevents(ex: ExampleSession) -> None:
    await ex.show("emailgateway.aggrevents", DomainID=ex.domain_id, **JANUARY)


@example("emailgateway.exportevents")
async def exportevents(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.exportevents",
        http_get=True,
        DomainID=ex.domain_id,
        Event="bounced",
        **JANUARY,
    )


@example("emailgateway.domainstats")
async def domainstats(ex: ExampleSession) -> None:
    await ex.show("emailgateway.domainstats", DomainID=ex.domain_id, **JANUARY)


@example("emailgateway.accountstats")
async def accountstats(ex: ExampleSession) -> None:
    await ex.show("emailgateway.accountstats", DomainIDs=str(ex.domain_id), **JANUARY)


@example("emailgateway.recipientdomainstats")
async def recipientdomainstats(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.recipientdomainstats",
        DomainID=ex.domain_id,
        RecipientToDomain="gmail.com",
        **JANUARY,
    )


@example("emailgateway.listrecipientdomains")
async def listrecipientdomains(ex: ExampleSession) -> None:
    await ex.show("emailgateway.listrecipientdomains", DomainID=ex.domain_id, Limit=20, **JANUARY)


@example("emailgateway.getmessage")
async def getmessage(ex: ExampleSession) -> None:
    # The history ``setup`` writes has the receipt's events only; give its recipient the state
    # the delivery worker would have left (delivered at the second attempt).
    r = schema.recipients
    async with ex.services.db.write() as conn:
        await conn.execute(
            update(r)
            .where(r.c.message_id == "162a101e-0c78-491a-9403-94dad8a3e1ca")
            .values(
                state="delivered",
                attempts=2,
                last_code=250,
                last_response="250 2.0.0 OK",
                updated_at=r.c.created_at + 240,
            )
        )
    await ex.show(
        "emailgateway.getmessage",
        "admin",
        MessageID="<162a101e-0c78-491a-9403-94dad8a3e1ca@example.com>",
    )
