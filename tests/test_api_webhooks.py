"""Webhooks, configuration side: the internal commands, the public /api/v1/webhooks, signing
keys (001; 002's spellings and event names)."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select

from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import bearer, make_account, sender_key
from tests.conftest import Api, make_settings
from tests.relayfix import admin_node
from tests.test_webhook_urls import FORBIDDEN, INVALID

HOOK = "https://example.com/webhooks/email-events"


async def test_addwebhook_documented_example(api: Api) -> None:
    acct = await make_account(api)
    res = await api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event="delivery",
        WebhookURL=HOOK,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert isinstance(res["NewWebhookID"], int)
    listed = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    # The documented fields, then the delivery side's (nothing attempted yet).
    assert listed["Webhooks"] == [
        {
            "WebhookID": res["NewWebhookID"],
            "Event": "delivery",
            "WebhookURL": HOOK,
            "LastAttemptAt": None,
            "LastStatus": None,
            "LastError": None,
            "FailureCount": 0,
        }
    ]
    assert list(listed["Webhooks"][0])[:3] == ["WebhookID", "Event", "WebhookURL"]


async def test_addwebhook_002_spelling_and_every_event(api: Api) -> None:
    acct = await make_account(api)
    for event in ("delivery", "bounce", "open", "click", "unsubscribe", "complaint"):
        res = await api.call(
            "EmailGateway.AddWebhook",
            APIKey=acct.api_key,
            DomainID=str(acct.domain_id),
            Event=event,
            WebhookURL="https://yourdomain.com/webhook",
        )
        assert res["Success"] is True, (event, res)
    # The public spelling is the same event.
    res = await api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event="Bounced",
        WebhookURL=HOOK,
    )
    assert res["Success"] is True
    listed = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert [w["Event"] for w in listed["Webhooks"]][-1] == "bounce"


async def test_addwebhook_errors(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    base = {"APIKey": acct.api_key}

    async def code(**params: object) -> object:
        res = await api.call("emailgateway.addwebhook", **base, **params)
        assert res["Success"] is False and res["_status"] == 200
        return res["ErrorCode"]

    assert await code(Event="delivery", WebhookURL=HOOK) == 1
    assert await code(DomainID=acct.domain_id, WebhookURL=HOOK) == 2
    assert await code(DomainID=acct.domain_id, Event="send", WebhookURL=HOOK) == 3
    assert await code(DomainID=other.domain_id, Event="delivery", WebhookURL=HOOK) == 4
    assert await code(DomainID=999, Event="delivery", WebhookURL=HOOK) == 4
    assert await code(DomainID=acct.domain_id, Event="delivery") == 5
    bad = await api.call(
        "emailgateway.addwebhook",
        **base,
        DomainID=acct.domain_id,
        Event="delivery",
        WebhookURL="ftp://example.com/x",
    )
    assert bad == {
        "Success": False,
        "ErrorCode": 6,
        "ErrorMessage": "Webhook URL must be a valid HTTP or HTTPS URL.",
        "_status": 200,
    }
    assert (
        await code(DomainID=acct.domain_id, Event="delivery", WebhookURL="http://127.0.0.1/") == 7
    )


async def test_addwebhook_refuses_every_ssrf_notation(api: Api, services: Services) -> None:
    acct = await make_account(api)
    params = {"APIKey": acct.api_key, "DomainID": acct.domain_id, "Event": "delivery"}
    for url in FORBIDDEN:
        res = await api.call("emailgateway.addwebhook", **params, WebhookURL=url)
        assert res["ErrorCode"] == 7, (url, res)
    for url in INVALID:
        res = await api.call("emailgateway.addwebhook", **params, WebhookURL=url)
        assert res["ErrorCode"] == 6, (url, res)
    async with services.db.read() as conn:
        assert (await conn.execute(select(t.webhooks))).first() is None


async def test_deletewebhook(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    made = await api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event="bounce",
        WebhookURL=HOOK,
    )
    wid = made["NewWebhookID"]
    base = {"APIKey": acct.api_key}
    assert (await api.call("emailgateway.deletewebhook", **base, DomainID=acct.domain_id))[
        "ErrorCode"
    ] == 1
    assert (await api.call("emailgateway.deletewebhook", **base, WebhookID=wid))["ErrorCode"] == 2
    foreign = await api.call(
        "emailgateway.deletewebhook", **base, WebhookID=wid, DomainID=other.domain_id
    )
    assert foreign["ErrorCode"] == 3
    wrong = await api.call(
        "emailgateway.deletewebhook", **base, WebhookID=wid + 100, DomainID=acct.domain_id
    )
    assert wrong["ErrorCode"] == 4
    # 002's example is a form body.
    async with api.session.post(
        f"{api.base}/api.php",
        data={
            "APIKey": acct.api_key,
            "Command": "EmailGateway.DeleteWebhook",
            "WebhookID": str(wid),
            "DomainID": str(acct.domain_id),
        },
    ) as resp:
        assert await resp.json(content_type=None) == {"Success": True, "ErrorCode": 0}
    listed = await api.call("emailgateway.getwebhooks", **base, DomainID=acct.domain_id)
    assert listed["Webhooks"] == []
    again = await api.call(
        "emailgateway.deletewebhook", **base, WebhookID=wid, DomainID=acct.domain_id
    )
    assert again["ErrorCode"] == 4


async def test_getwebhooks_errors(api: Api) -> None:
    acct = await make_account(api)
    # 002's spelling and its string DomainID.
    res = await api.call(
        "EmailGateway.GetWebhooks", APIKey=acct.api_key, DomainID=str(acct.domain_id)
    )
    assert res["Success"] is True and res["Webhooks"] == [] and res["SigningKey"]
    other = await make_account(api, "other@example.com", "other.example")
    assert (await api.call("emailgateway.getwebhooks", APIKey=acct.api_key))["ErrorCode"] == 1
    foreign = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=other.domain_id
    )
    assert foreign["ErrorCode"] == 2


async def test_signing_keys_are_per_domain_then_rotated(api: Api) -> None:
    acct = await make_account(api)
    second = await make_account(api, "two@example.com", "two.example")
    listed = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    first_key = listed["SigningKey"]
    # Every domain has its own random key from its creation: one tenant cannot sign for another.
    assert re.fullmatch(r"[0-9A-F]{64}", first_key)
    other = await api.call(
        "emailgateway.getwebhooks", APIKey=second.api_key, DomainID=second.domain_id
    )
    assert re.fullmatch(r"[0-9A-F]{64}", other["SigningKey"])
    assert other["SigningKey"] != first_key
    again = await api.call("emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert again["SigningKey"] == first_key

    rotated = await api.call(
        "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert rotated["Success"] is True and rotated["ErrorCode"] == 0
    key = rotated["SigningKey"]
    assert re.fullmatch(r"[0-9A-F]{64}", key) and key != first_key
    listed = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert listed["SigningKey"] == key
    # Other domains keep theirs.
    unchanged = await api.call(
        "emailgateway.getwebhooks", APIKey=second.api_key, DomainID=second.domain_id
    )
    assert unchanged["SigningKey"] == other["SigningKey"]
    again = await api.call(
        "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert again["SigningKey"] != key


async def test_signing_key_stored_sealed_with_a_kek(tmp_path: Path, db_url: str) -> None:
    import base64
    import os

    kek = base64.b64encode(os.urandom(32)).decode()
    settings = make_settings(tmp_path, db_url, RELAY_KEY_ENCRYPTION_KEY=kek)
    async with admin_node(settings) as (services, api):
        acct = await make_account(api)
        # The key a domain gets at creation is sealed like a rotated one.
        created = await api.call(
            "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        async with services.db.read() as conn:
            first = await conn.scalar(
                select(t.gateway_domains.c.signing_key).where(
                    t.gateway_domains.c.id == acct.domain_id
                )
            )
        assert first.startswith("enc:v1:") and created["SigningKey"] not in first
        res = await api.call(
            "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        async with services.db.read() as conn:
            stored = await conn.scalar(
                select(t.gateway_domains.c.signing_key).where(
                    t.gateway_domains.c.id == acct.domain_id
                )
            )
        assert stored is not None and stored.startswith("enc:v1:")
        assert res["SigningKey"] not in stored
        listed = await api.call(
            "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        assert listed["SigningKey"] == res["SigningKey"]


async def test_regeneratesigningkey_errors(api: Api, services: Services) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    before = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert (await api.call("emailgateway.regeneratesigningkey", APIKey=acct.api_key))[
        "ErrorCode"
    ] == 1
    foreign = await api.call(
        "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=other.domain_id
    )
    assert foreign["ErrorCode"] == 2
    # Error 3, provoked for real: the UPDATE matches no row (a trigger skips it, as a domain
    # deleted between the ownership check and the rotation would), and nothing is persisted.
    async with services.db.write() as conn:
        if services.db.is_sqlite:
            await conn.exec_driver_sql(
                "CREATE TRIGGER skip_rotation BEFORE UPDATE OF signing_key ON gateway_domains "
                "BEGIN SELECT RAISE(IGNORE); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE FUNCTION skip_rotation() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NULL; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER skip_rotation BEFORE UPDATE ON gateway_domains "
                "FOR EACH ROW EXECUTE FUNCTION skip_rotation()"
            )
    res = await api.call(
        "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert res["Success"] is False and res["ErrorCode"] == 3
    listed = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert listed["SigningKey"] == before["SigningKey"]


# -- the public route ---------------------------------------------------------------------------


async def test_public_webhooks_documented_flow(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    status, body = await api.request(
        "POST",
        "/api/v1/webhooks",
        headers=bearer(key),
        json={"Event": "delivered", "WebhookURL": HOOK},
    )
    assert status == 200 and set(body) == {"NewWebhookID"} and isinstance(body["NewWebhookID"], int)
    # 002 lists the internal names for the public route too.
    status, second = await api.request(
        "POST",
        "/api/v1/webhooks",
        headers=bearer(key),
        json={"Event": "bounce", "WebhookURL": "https://yourdomain.com/webhook"},
    )
    assert status == 200
    status, listed = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
    assert status == 200
    assert listed == {
        "Webhooks": [
            {"WebhookID": body["NewWebhookID"], "Event": "delivered", "WebhookURL": HOOK},
            {
                "WebhookID": second["NewWebhookID"],
                "Event": "bounced",
                "WebhookURL": "https://yourdomain.com/webhook",
            },
        ]
    }
    # The internal listing of the same domain uses the internal names.
    internal = await api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    assert [w["Event"] for w in internal["Webhooks"]] == ["delivery", "bounce"]
    status, deleted = await api.request(
        "DELETE", "/api/v1/webhooks", headers=bearer(key), json={"WebhookID": body["NewWebhookID"]}
    )
    assert status == 200 and deleted == {}
    # 002's example sends the JSON without a content type.
    status, deleted = await api.request(
        "DELETE",
        "/api/v1/webhooks",
        headers=bearer(key),
        data=f'{{"WebhookID":"{second["NewWebhookID"]}"}}',
    )
    assert status == 200 and deleted == {}
    status, listed = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
    assert listed == {"Webhooks": []}


async def test_public_webhooks_errors_and_statuses(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    h = bearer(key)

    async def post(body: dict[str, object], headers: dict[str, str] = h) -> tuple[int, object]:
        return await api.request("POST", "/api/v1/webhooks", headers=headers, json=body)

    assert await post({"WebhookURL": HOOK}) == (
        400,
        {"Errors": [{"Code": 2, "Message": "Event is missing"}]},
    )
    assert await post({"Event": "delivered"}) == (
        400,
        {"Errors": [{"Code": 5, "Message": "WebhookURL is missing"}]},
    )
    status, both = await post({})
    assert status == 400 and [e["Code"] for e in both["Errors"]] == [2, 5]  # type: ignore[index]
    assert await post({"Event": "sent", "WebhookURL": HOOK}) == (
        400,
        {"Errors": [{"Code": 3, "Message": "Invalid Event value"}]},
    )
    status, body = await post({"Event": "delivered", "WebhookURL": "http://[::1]/"})
    assert status == 400 and body["Errors"][0]["Code"] == 3  # type: ignore[index]
    status, body = await post({"Event": "delivered", "WebhookURL": "gopher://x.example/"})
    assert status == 400 and body["Errors"][0]["Code"] == 3  # type: ignore[index]
    for headers in ({}, bearer("eg_live_wrong"), {"Authorization": "Basic abc"}):
        status, body = await post({"Event": "delivered", "WebhookURL": HOOK}, headers)
        assert (status, body) == (
            401,
            {"Errors": [{"Code": 13, "Message": "Invalid SenderAPIKey"}]},
        )
        status, body = await api.request("GET", "/api/v1/webhooks", headers=headers)
        assert status == 401 and body["Errors"][0]["Code"] == 13
        status, body = await api.request(
            "DELETE", "/api/v1/webhooks", headers=headers, json={"WebhookID": 1}
        )
        assert status == 401 and body["Errors"][0]["Code"] == 13
    # SenderAPIKey as a parameter (legacy /api.php access) works too.
    via_param = await api.call(
        "emailgateway.addwebhook.public", SenderAPIKey=key, Event="opened", WebhookURL=HOOK
    )
    assert isinstance(via_param["NewWebhookID"], int)
    status, body = await api.request("DELETE", "/api/v1/webhooks", headers=h, json={})
    assert (status, body) == (400, {"Errors": [{"Code": 1, "Message": "WebhookID is missing"}]})
    status, body = await api.request(
        "DELETE", "/api/v1/webhooks", headers=h, json={"WebhookID": 99999}
    )
    assert (status, body) == (404, {"Errors": [{"Code": 4, "Message": "Invalid WebhookID"}]})
    # Another domain's webhook is "invalid" for this key.
    other = await make_account(api, "other@example.com", "other.example")
    made = await api.call(
        "emailgateway.addwebhook",
        APIKey=other.api_key,
        DomainID=other.domain_id,
        Event="delivery",
        WebhookURL=HOOK,
    )
    status, body = await api.request(
        "DELETE", "/api/v1/webhooks", headers=h, json={"WebhookID": made["NewWebhookID"]}
    )
    assert status == 404 and body["Errors"][0]["Code"] == 4


async def test_public_webhooks_invalid_user_account(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    res = await api.call("user.update", admin=True, UserID=acct.user_id, Status="Disabled")
    assert res["Success"] is True
    status, body = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
    assert (status, body) == (403, {"Errors": [{"Code": 2, "Message": "Invalid user account"}]})
    status, body = await api.request(
        "DELETE", "/api/v1/webhooks", headers=bearer(key), json={"WebhookID": 1}
    )
    assert status == 403 and body["Errors"][0]["Code"] == 2
    # Deleting the user deletes their keys: now the key itself is invalid.
    await api.call("user.delete", admin=True, UserID=acct.user_id)
    status, body = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
    assert status == 401 and body["Errors"][0]["Code"] == 13


async def test_public_webhooks_via_api_php(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    async with api.session.post(
        f"{api.base}/api.php",
        headers=bearer(key),
        json={"Command": "emailgateway.getwebhooks.public"},
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"Webhooks": []}


async def test_getwebhookdeliveries_errors_and_empty_history(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    made = await api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event="delivery",
        WebhookURL=HOOK,
    )
    wid = made["NewWebhookID"]
    foreign = await api.call(
        "emailgateway.addwebhook",
        APIKey=other.api_key,
        DomainID=other.domain_id,
        Event="delivery",
        WebhookURL=HOOK,
    )

    async def code(**params: object) -> object:
        res = await api.call("emailgateway.getwebhookdeliveries", APIKey=acct.api_key, **params)
        assert res["Success"] is False and res["_status"] == 200, res
        return res["ErrorCode"]

    assert await code(DomainID=acct.domain_id) == 1
    assert await code(WebhookID=wid) == 2
    assert await code(WebhookID=wid, DomainID=other.domain_id) == 3
    assert await code(WebhookID=wid, DomainID=2**40) == 3
    assert await code(WebhookID=wid, DomainID="x") == 3
    assert await code(WebhookID=foreign["NewWebhookID"], DomainID=acct.domain_id) == 4
    assert await code(WebhookID=2**63, DomainID=acct.domain_id) == 4
    assert await code(WebhookID="1e300", DomainID=acct.domain_id) == 4
    for count in (0, 101, "ten", -1):
        assert await code(WebhookID=wid, DomainID=acct.domain_id, RetrieveCount=count) == 5
    res = await api.call(
        "emailgateway.getwebhookdeliveries",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        WebhookID=wid,
    )
    assert res == {
        "Success": True,
        "ErrorCode": 0,
        "WebhookID": wid,
        "PendingDeliveries": 0,
        "FailureCount": 0,
        "Attempts": [],
        "_status": 200,
    }
    await api.call(
        "emailgateway.deletewebhook", APIKey=acct.api_key, WebhookID=wid, DomainID=acct.domain_id
    )
    assert await code(WebhookID=wid, DomainID=acct.domain_id) == 4


async def test_allow_networks_exempt_literals_at_save_time(tmp_path: Path, db_url: str) -> None:

    settings = make_settings(
        tmp_path,
        db_url,
        RELAY_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8,10.1.0.0/16",
    )
    async with admin_node(settings) as (_, api):
        acct = await make_account(api)
        params = {"APIKey": acct.api_key, "DomainID": acct.domain_id, "Event": "delivery"}
        for url in ("http://127.0.0.1:8080/in", "http://0x7f.1/in", "https://10.1.2.3/in"):
            res = await api.call("emailgateway.addwebhook", **params, WebhookURL=url)
            assert res["Success"] is True, (url, res)
        for url in ("http://10.2.0.1/", "http://localhost/", "http://[::1]/"):
            res = await api.call("emailgateway.addwebhook", **params, WebhookURL=url)
            assert res["ErrorCode"] == 7, (url, res)
        key = await sender_key(api, acct)
        status, body = await api.request(
            "POST",
            "/api/v1/webhooks",
            headers=bearer(key),
            json={"Event": "delivered", "WebhookURL": "http://127.0.0.1:9/x"},
        )
        assert status == 200 and "NewWebhookID" in body
