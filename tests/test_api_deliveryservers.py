"""Delivery servers (004): update, testresults, deliveryservers.delete, and (CONTRACT.md)
deliveryserver.unassign; create/get/assign keep working."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from relay.services import Services
from relay.store import schema as t
from tests.conftest import Api

CREATE = {
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
UPDATE = {
    "DeliveryServerName": "Updated SMTP Server",
    "SendMethodSMTPHost": "smtp2.example.com",
    "SendMethodSMTPPort": 587,
    "SendMethodSMTPSecure": "tls",
    "SendMethodSMTPTimeout": 30,
    "SendMethodSMTPAuth": True,
    "SendMethodSMTPUsername": "new_user",
    "SendMethodSMTPPassword": "new_password",
    "DomainSettings_LinkTracking": "track.example.com",
    "DomainSettings_OpenTracking": "open.example.com",
    "DomainSettings_MFrom": "bounce.example.com",
    "SenderRotation": "Enabled",
}


async def create(api: Api, **over: Any) -> int:
    res = await api.call("deliveryserver.create", admin=True, **{**CREATE, **over})
    assert res["Success"] is True, res
    return int(res["DeliveryServerID"])


async def get(api: Api, server_id: int) -> dict[str, Any]:
    res = await api.call("deliveryservers.get", admin=True)
    server: dict[str, Any] = res["DeliveryServers"][str(server_id)]
    return server


async def test_update_documented_example(api: Api, services: Services) -> None:
    sid = await create(api)
    res = await api.call("deliveryserver.update", admin=True, DeliveryServerID=sid, **UPDATE)
    assert res == {
        "Success": True,
        "ErrorCode": 0,
        "ErrorText": "",
        "DeliveryServerID": sid,
        "_status": 200,
    }
    server = await get(api, sid)
    assert server["Name"] == "Updated SMTP Server"
    assert server["ConnectionParams"]["smtp_host"] == "smtp2.example.com"
    assert server["ConnectionParams"]["smtp_username"] == "new_user"
    # Never in clear, and stored sealed-or-plain but never returned.
    assert server["ConnectionParams"]["smtp_password"] == "********"
    # An omitted optional field keeps its value.
    assert server["Domains"]["enforced_from"] == "noreply@example.com"
    async with services.db.read() as conn:
        row = (await conn.execute(select(t.delivery_servers))).one()
    assert row.sender_rotation == "Enabled"
    assert services.box.open(row.password) == "new_password"
    # The delivery side sees the new parameters (routes invalidated).
    ok = await api.call("deliveryserver.assign", admin=True, DeliveryServerID=sid, UserGroupID=1)
    assert ok["Success"]
    routes = await services.directory.routes(1)
    assert [(r.host, r.username, r.password) for r in routes] == [
        ("smtp2.example.com", "new_user", "new_password")
    ]
    await api.call(
        "deliveryserver.update",
        admin=True,
        DeliveryServerID=sid,
        **{**UPDATE, "SendMethodSMTPHost": "smtp3.example.com"},
    )
    assert [r.host for r in await services.directory.routes(1)] == ["smtp3.example.com"]


async def test_update_keeps_password_when_omitted(api: Api, services: Services) -> None:
    sid = await create(api)
    body = {k: v for k, v in UPDATE.items() if k != "SendMethodSMTPPassword"}
    res = await api.call("deliveryserver.update", admin=True, DeliveryServerID=sid, **body)
    assert res["Success"] is True
    async with services.db.read() as conn:
        row = (await conn.execute(select(t.delivery_servers))).one()
    assert services.box.open(row.password) == "smtp_password"
    # Without a stored password, one is required when auth is on.
    noauth = await create(api, SendMethodSMTPAuth=False)
    res = await api.call("deliveryserver.update", admin=True, DeliveryServerID=noauth, **body)
    assert res["ErrorCode"] == [8]


async def test_update_errors(api: Api) -> None:
    sid = await create(api)
    missing = await api.call("deliveryserver.update", admin=True, DeliveryServerID=99, **UPDATE)
    assert missing == {
        "Success": False,
        "ErrorCode": [17],
        "ErrorText": ["Delivery server not found"],
        "_status": 200,
    }
    no_id = await api.call("deliveryserver.update", admin=True, **UPDATE)
    assert no_id["ErrorCode"] == [17]
    empty = await api.call("deliveryserver.update", admin=True, DeliveryServerID=sid)
    assert empty["ErrorCode"] == [1, 2, 3, 4, 5, 6, 9, 10, 11]
    assert empty["ErrorText"][0] == "Missing deliveryservername"
    bad = await api.call(
        "deliveryserver.update",
        admin=True,
        DeliveryServerID=sid,
        **{
            **UPDATE,
            "SendMethodSMTPSecure": "starttls",
            "SendMethodSMTPAuth": "maybe",
            "SendMethodSMTPTimeout": "soon",
            "DomainSettings_EnforcedFrom": "not-an-email",
        },
    )
    assert bad["ErrorCode"] == [13, 14, 15, 16]
    no_user = await api.call(
        "deliveryserver.update",
        admin=True,
        DeliveryServerID=sid,
        **{**UPDATE, "SendMethodSMTPUsername": ""},
    )
    assert no_user["ErrorCode"] == [7]
    user = await api.call("deliveryserver.update", APIKey="x", DeliveryServerID=sid, **UPDATE)
    assert user["ErrorCode"] == 99998


async def test_testresults_documented_example(api: Api) -> None:
    sid = await create(api)
    res = await api.call(
        "deliveryserver.testresults",
        admin=True,
        DeliveryServerID=sid,
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
    assert res == {"Success": True, "ErrorCode": 0, "ErrorText": "", "_status": 200}
    server = await get(api, sid)
    assert server["VerificationResults"] == {
        "email_delivery": True,
        "spf": True,
        "dkim": True,
        "dmarc": True,
        "sender_domain": True,
        "link_domain": True,
        "open_domain": True,
    }
    assert server["VerificationLastCheckedAt"] == "2025-12-28 10:30:00"
    # PHP-style form fields, and a false value.
    async with api.session.post(
        f"{api.base}/api.php",
        data={
            "Command": "deliveryserver.testresults",
            "AdminAPIKey": api_admin_key(),
            "DeliveryServerID": str(sid),
            "TestResults[SPF]": "1",
            "TestResults[DKIM]": "0",
            "LastCheckedAt": "2026-01-02 03:04:05",
        },
    ) as resp:
        assert (await resp.json(content_type=None))["Success"] is True
    server = await get(api, sid)
    assert server["VerificationResults"]["spf"] is True
    assert server["VerificationResults"]["dkim"] is False
    assert server["VerificationResults"]["email_delivery"] is False


def api_admin_key() -> str:
    from tests.conftest import ADMIN_KEY

    return ADMIN_KEY


async def test_testresults_errors(api: Api) -> None:
    sid = await create(api)
    both = await api.call(
        "deliveryserver.testresults", admin=True, TestResults={"SPF": True}, LastCheckedAt="x"
    )
    assert both["ErrorCode"] == [1, 4]
    assert both["ErrorText"] == ["Missing deliveryserverid", "Missing last_checked_at"]
    assert (
        await api.call(
            "deliveryserver.testresults",
            admin=True,
            DeliveryServerID=sid,
            LastCheckedAt="2025-12-28 10:30:00",
        )
    )["ErrorCode"] == [2]
    invalid = await api.call(
        "deliveryserver.testresults",
        admin=True,
        DeliveryServerID=9999,
        TestResults={"SPF": True},
        LastCheckedAt="2025-12-28 10:30:00",
    )
    assert invalid == {
        "Success": False,
        "ErrorCode": [3],
        "ErrorText": ["Invalid deliveryserverid"],
        "_status": 200,
    }
    assert (
        await api.call(
            "deliveryserver.testresults",
            admin=True,
            DeliveryServerID=sid,
            TestResults={"SPF": True},
        )
    )["ErrorCode"] == [4]


async def test_delete_comma_list(api: Api, services: Services) -> None:
    a, b, c = await create(api), await create(api), await create(api)
    await api.call("deliveryserver.assign", admin=True, DeliveryServerID=a, UserGroupID=1)
    assert [r.id for r in await services.directory.routes(1)] == [a]
    res = await api.call("deliveryservers.delete", admin=True, DeliveryServerID=f"{a},{b},777")
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    listing = await api.call("deliveryservers.get", admin=True)
    assert list(listing["DeliveryServers"]) == [str(c)]
    assert await services.directory.routes(1) == []
    async with services.db.read() as conn:
        assert (await conn.execute(select(t.delivery_server_assignments))).first() is None
    assert (await api.call("deliveryservers.delete", admin=True))["ErrorCode"] == [1]
    assert (await api.call("deliveryservers.delete", admin=True, DeliveryServerID=""))[
        "ErrorCode"
    ] == [1]
    await api.call("deliveryservers.delete", admin=True, DeliveryServerID=str(c))
    assert (await api.call("deliveryservers.get", admin=True))["ErrorCode"] == 2


async def test_unassign(api: Api, services: Services) -> None:
    sid = await create(api)
    group = await api.call("usergroup.create", admin=True, Name="Enterprise Users")
    gid = group["UserGroupID"]
    await api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=sid,
        UserGroupID=1,
        Channels="Marketing,Transactional",
    )
    await api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=sid,
        UserGroupID=gid,
        Channels="AutoResponder",
    )
    assert [r.id for r in await services.directory.routes(1)] == [sid]
    res = await api.call(
        "deliveryserver.unassign",
        admin=True,
        DeliveryServerID=sid,
        UserGroupID=1,
        Channels="Transactional",
    )
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    assert await services.directory.routes(1) == []
    server = await get(api, sid)
    assert server["UserGroupAssignments"] == [
        {"UserGroupID": "1", "GroupName": "Default User Group", "Channels": ["Marketing"]},
        {"UserGroupID": str(gid), "GroupName": "Enterprise Users", "Channels": ["AutoResponder"]},
    ]
    await api.call("deliveryserver.unassign", admin=True, DeliveryServerID=sid, UserGroupID=1)
    await api.call("deliveryserver.unassign", admin=True, DeliveryServerID=sid, UserGroupID=gid)
    server = await get(api, sid)
    assert server["UserGroupAssignments"] == [] and server["IsAllocated"] is False
    # Errors.
    base = {"admin": True}
    assert (await api.call("deliveryserver.unassign", **base, UserGroupID=1))["ErrorCode"] == 1
    assert (await api.call("deliveryserver.unassign", **base, DeliveryServerID=sid))[
        "ErrorCode"
    ] == 2
    assert (await api.call("deliveryserver.unassign", **base, DeliveryServerID=999, UserGroupID=1))[
        "ErrorCode"
    ] == 3
    assert (
        await api.call("deliveryserver.unassign", **base, DeliveryServerID=sid, UserGroupID=999)
    )["ErrorCode"] == 4
    assert (
        await api.call(
            "deliveryserver.unassign", **base, DeliveryServerID=sid, UserGroupID=1, Channels="Fax"
        )
    )["ErrorCode"] == 5


async def test_create_get_assign_still_documented(api: Api) -> None:
    res = await api.call("deliveryserver.create", admin=True, **CREATE)
    assert res["Success"] is True and isinstance(res["DeliveryServerID"], int)
    sid = res["DeliveryServerID"]
    ok = await api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=sid,
        UserGroupID=1,
        Channels="Marketing,Transactional",
    )
    assert ok["Success"]
    server = await get(api, sid)
    assert server["DeliveryServerID"] == str(sid) and server["Name"] == "Primary SMTP Server"
    assert server["ConnectionParams"]["smtp_password"] == "********"
    assert server["UserGroupAssignments"] == [
        {
            "UserGroupID": "1",
            "GroupName": "Default User Group",
            "Channels": ["Marketing", "Transactional"],
        }
    ]
