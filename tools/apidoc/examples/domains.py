"""Examples: gateway sender domains, user sender domains (003), PowerMTA and MX routes."""

from __future__ import annotations

from tools.apidoc.generator import EXAMPLE_ADMIN_KEY, ExampleSession, example


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


async def _spare(ex: ExampleSession, name: str) -> int:
    """A domain of its own, so example.com keeps its records and status for the others."""
    made = await ex.call("emailgateway.adddomain", DomainName=name)
    return int(made["NewSenderDomainID"])


@example("emailgateway.updatedomain")
async def updatedomain(ex: ExampleSession) -> None:
    domain_id = await _spare(ex, "tracked.example.com")
    await ex.show(
        "emailgateway.updatedomain",
        DomainID=domain_id,
        LinkTracking=1,
        OpenTracking=1,
        Subdomain="outbound",
        TrackPrefixDisabled=1,
    )


@example("emailgateway.getdomains")
async def getdomains(ex: ExampleSession) -> None:
    await ex.show("emailgateway.getdomains", WithCounts=1)


@example("emailgateway.deletedomain")
async def deletedomain(ex: ExampleSession) -> None:
    domain_id = await _spare(ex, "retired.example.com")
    await ex.show("emailgateway.deletedomain", DomainID=domain_id)


@example("emailgateway.cleardomainqueue")
async def cleardomainqueue(ex: ExampleSession) -> None:
    domain_id = await _spare(ex, "queue.example.com")
    await ex.show("emailgateway.cleardomainqueue", DomainID=domain_id)


# -- user sender domains (003) and the PowerMTA / MX integration routes ----------------------


@example("user.senderdomain.create")
async def senderdomain_create(ex: ExampleSession) -> None:
    await ex.show_route(
        "POST",
        "/api/v1/user.senderdomain",
        body={
            "Command": "user.senderdomain.create",
            "APIKey": ex.user_key,
            "SenderDomain": "example.com",
            "LinkTracking": True,
            "OpenTracking": True,
            "UnsubscribeLink": False,
        },
    )


async def _sender_domain(ex: ExampleSession, name: str) -> int:
    made = await ex.call("user.senderdomain.create", auth="apikey", SenderDomain=name)
    return int(made["DomainID"])


@example("user.senderdomain.list")
async def senderdomain_list(ex: ExampleSession) -> None:
    await ex.show_route("GET", "/api/v1/user.senderdomains", query={"APIKey": ex.user_key})


@example("user.senderdomain.get")
async def senderdomain_get(ex: ExampleSession) -> None:
    domain_id = await _sender_domain(ex, "brand.example.com")
    await ex.show_route(
        "GET",
        "/api/v1/user.senderdomain",
        query={"APIKey": ex.user_key, "DomainID": str(domain_id)},
    )


@example("user.senderdomain.update")
async def senderdomain_update(ex: ExampleSession) -> None:
    domain_id = await _sender_domain(ex, "updates.example.com")
    await ex.show_route(
        "PATCH",
        "/api/v1/user.senderdomain",
        body={
            "Command": "user.senderdomain.update",
            "APIKey": ex.user_key,
            "DomainID": domain_id,
            "CustomSubdomain": "em",
            "UseTrackingSubdomain": True,
        },
    )


@example("user.senderdomain.delete")
async def senderdomain_delete(ex: ExampleSession) -> None:
    domain_id = await _sender_domain(ex, "old-brand.example.com")
    await ex.show_route(
        "DELETE",
        "/api/v1/user.senderdomain",
        query={"APIKey": ex.user_key, "DomainID": str(domain_id)},
    )


@example("user.senderdomain.dns")
async def senderdomain_dns(ex: ExampleSession) -> None:
    domain_id = await _sender_domain(ex, "dns.example.com")
    await ex.show_route(
        "GET",
        "/api/v1/user.senderdomain.dns",
        query={"APIKey": ex.user_key, "DomainID": str(domain_id)},
    )


@example("sender.domains")
async def sender_domains(ex: ExampleSession) -> None:
    await ex.show_route(
        "POST",
        "/api/v1/sender.domains",
        key=EXAMPLE_ADMIN_KEY,
        body={"DomainsResponseFormat": "json"},
    )


@example("inbound-relay-domain-check")
async def inbound_relay_domain_check(ex: ExampleSession) -> None:
    await ex.show_route(
        "GET",
        "/api/v1/inbound-relay-domain-check",
        key=EXAMPLE_ADMIN_KEY,
        query={"domain": "example.com"},
    )
