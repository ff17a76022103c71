"""Examples: events and statistics (over the history ``setup`` writes for January 2026)."""

from __future__ import annotations

from typing import Any

from relay.admin.apidoc import ExampleSession, example

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
