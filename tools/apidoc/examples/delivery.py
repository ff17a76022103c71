"""Examples: delivery servers."""

from __future__ import annotations

from typing import Any

from tools.apidoc.generator import ExampleSession, example

SERVER: dict[str, Any] = {
    "DeliveryServerName": "Primary SMTP Server",
    "SendMethodSMTPHost": "smtp.example.com",
    "SendMethodSMTPPort": 587,
    "SendMethodSMTPSecure": "tls",
    "SendMethodSMTPTimeout": 30,
    "SendMethodSMTPAuth": True,
    "SendMethodSMTPUsername": "smtp_user",
    "SendMethodSMTPPassword": "smtp_password",
    "DomainSettings_LinkTracking": "track.example.com",
    "DomainSettings_OpenTracking": "open.example.com",
    "DomainSettings_MFrom": "bounce.example.com",
    "DomainSettings_EnforcedFrom": "noreply@example.com",
}


@example("deliveryserver.create")
async def create(ex: ExampleSession) -> None:
    await ex.show("deliveryserver.create", auth="admin", **SERVER)


async def _server(ex: ExampleSession, name: str) -> int:
    made = await ex.call(
        "deliveryserver.create", auth="admin", **{**SERVER, "DeliveryServerName": name}
    )
    return int(made["DeliveryServerID"])


@example("deliveryservers.get")
async def get_all(ex: ExampleSession) -> None:
    await ex.show("deliveryservers.get", auth="admin")


@example("deliveryserver.assign")
async def assign(ex: ExampleSession) -> None:
    server_id = await _server(ex, "Transactional pool")
    await ex.show(
        "deliveryserver.assign",
        auth="admin",
        DeliveryServerID=server_id,
        UserGroupID=1,
        Channels="Transactional",
    )


@example("deliveryserver.update")
async def update(ex: ExampleSession) -> None:
    server_id = await _server(ex, "To be updated")
    await ex.show(
        "deliveryserver.update",
        auth="admin",
        DeliveryServerID=server_id,
        DeliveryServerName="Updated SMTP Server",
        SendMethodSMTPHost="smtp2.example.com",
        SendMethodSMTPPort=587,
        SendMethodSMTPSecure="tls",
        SendMethodSMTPTimeout=30,
        SendMethodSMTPAuth=True,
        SendMethodSMTPUsername="new_user",
        SendMethodSMTPPassword="new_password",
        DomainSettings_LinkTracking="track.example.com",
        DomainSettings_OpenTracking="open.example.com",
        DomainSettings_MFrom="bounce.example.com",
        SenderRotation="Enabled",
        PowerMTA=1,
        PowerMTAVirtualMTA="pool-transactional",
    )


@example("deliveryserver.testresults")
async def testresults(ex: ExampleSession) -> None:
    server_id = await _server(ex, "Verified")
    await ex.show(
        "deliveryserver.testresults",
        auth="admin",
        DeliveryServerID=server_id,
        TestResults={
            "SPF": True,
            "DKIM": True,
            "DMARC": True,
            "SenderDomain": True,
            "LinkDomain": True,
            "OpenDomain": True,
            "EmailDelivery": True,
        },
        LastCheckedAt="2025-12-28 10:30:00",
    )


@example("deliveryservers.delete")
async def delete(ex: ExampleSession) -> None:
    first, second = await _server(ex, "Old 1"), await _server(ex, "Old 2")
    await ex.show("deliveryservers.delete", auth="admin", DeliveryServerID=f"{first},{second}")


@example("deliveryserver.unassign")
async def unassign(ex: ExampleSession) -> None:
    server_id = await _server(ex, "Leaving the pool")
    await ex.call("deliveryserver.assign", auth="admin", DeliveryServerID=server_id, UserGroupID=1)
    await ex.show(
        "deliveryserver.unassign", auth="admin", DeliveryServerID=server_id, UserGroupID=1
    )
