"""Examples: sender domains."""

from __future__ import annotations

from relay.admin.apidoc import ExampleSession, example


@example("emailgateway.adddomain")
async def adddomain(ex: ExampleSession) -> None:
    await ex.show(
        "emailgateway.adddomain",
        DomainName="example.org",
        Subdomain="outbound",
        TrackPrefix="links",
    )


@example("emailgateway.getdomain")
async def getdomain(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getdomain", DomainID=ex.domain_id)


@example("emailgateway.setdomainstatus")
async def setdomainstatus(ex: ExampleSession) -> None:
    made = await ex.call("emailgateway.adddomain", DomainName="approved.example.com")
    await ex.show(
        "emailgateway.setdomainstatus",
        auth="admin",
        DomainID=made["NewSenderDomainID"],
        Status="Enabled",
    )
