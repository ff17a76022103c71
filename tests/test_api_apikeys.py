"""emailgateway.addapi / getapis / deleteapi / replaceapi against 001 (and 002's spellings)."""

from __future__ import annotations

import re

from sqlalchemy import select

from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import bearer, make_account, make_domain, sender_key
from tests.conftest import Api


async def test_addapi_documented_example_and_shape(api: Api, services: Services) -> None:
    acct = await make_account(api)
    res = await api.call(
        "emailgateway.addapi",
        APIKey=acct.api_key,
        Description="Production API Key",
        DomainID=acct.domain_id,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert isinstance(res["NewAPIKeyID"], int)
    key = res["APIKey"]
    assert set(key) == {"APIKeyID", "APIKey", "Description", "DomainID"}
    assert key["APIKeyID"] == res["NewAPIKeyID"]
    assert key["Description"] == "Production API Key" and key["DomainID"] == acct.domain_id
    assert re.fullmatch(r"eg_live_[A-Za-z0-9]{32}", key["APIKey"])
    # Stored hashed: the clear key is nowhere in the table.
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.api_keys))).all()
    assert len(rows) == 1 and key["APIKey"] not in (rows[0].key_hash, rows[0].key_hint)
    # The key authenticates the public routes.
    status, body = await api.request("GET", "/api/v1/webhooks", headers=bearer(key["APIKey"]))
    assert status == 200 and body == {"Webhooks": []}


async def test_addapi_002_spelling_and_form_body(api: Api) -> None:
    acct = await make_account(api)
    async with api.session.post(
        f"{api.base}/api.php",
        data={
            "Command": "EmailGateway.AddAPI",
            "APIKey": acct.api_key,
            "Description": "My new API key",
            "DomainID": str(acct.domain_id),
        },
    ) as resp:
        res = await resp.json(content_type=None)
    assert res["Success"] is True and res["APIKey"]["Description"] == "My new API key"


async def test_addapi_errors(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    both = await api.call("emailgateway.addapi", APIKey=acct.api_key)
    assert both["Success"] is False and both["ErrorCode"] == [1, 2]
    no_desc = await api.call("emailgateway.addapi", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert no_desc["ErrorCode"] == [1]
    no_domain = await api.call("emailgateway.addapi", APIKey=acct.api_key, Description="x")
    assert no_domain["ErrorCode"] == [2]
    foreign = await api.call(
        "emailgateway.addapi", APIKey=acct.api_key, Description="x", DomainID=other.domain_id
    )
    assert foreign["ErrorCode"] == [3]
    missing = await api.call(
        "emailgateway.addapi", APIKey=acct.api_key, Description="x", DomainID=999
    )
    assert missing["ErrorCode"] == [3]
    denied = await api.call("emailgateway.addapi", APIKey="nope", Description="x", DomainID=1)
    assert denied["ErrorCode"] == 99998


async def test_getapis_lists_hints_never_keys(api: Api) -> None:
    acct = await make_account(api)
    first = await sender_key(api, acct, "one")
    second = await sender_key(api, acct, "two")
    res = await api.call("EmailGateway.GetAPIs", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert res["Success"] is True and res["ErrorCode"] == 0
    listed = res["APIKeys"]
    assert [k["Description"] for k in listed] == ["one", "two"]
    for item, key in zip(listed, (first, second), strict=True):
        assert {"APIKeyID", "APIKey", "Description", "DomainID"} <= set(item)
        assert isinstance(item["APIKeyID"], int) and item["DomainID"] == acct.domain_id
        assert item["APIKey"] != key and item["APIKey"].endswith(key[-4:])
        assert item["APIKey"].startswith("eg_live_")
    assert (await api.call("emailgateway.getapis", APIKey=acct.api_key))["ErrorCode"] == 1
    other = await make_account(api, "other@example.com", "other.example")
    foreign = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=other.domain_id)
    assert foreign["ErrorCode"] == 2


async def test_deleteapi_both_spellings(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    listed = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=acct.domain_id)
    key_id = listed["APIKeys"][0]["APIKeyID"]
    res = await api.call("EmailGateway.DeleteAPI", APIKey=acct.api_key, ApiKeyId=str(key_id))
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    status, body = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
    assert status == 401 and body["Errors"][0]["Code"] == 13
    again = await api.call("emailgateway.deleteapi", APIKey=acct.api_key, APIKeyID=key_id)
    assert again["ErrorCode"] == 2
    assert (await api.call("emailgateway.deleteapi", APIKey=acct.api_key))["ErrorCode"] == 1
    # Another user's key is "not found" too.
    other = await make_account(api, "other@example.com", "other.example")
    await sender_key(api, other)
    theirs = await api.call("emailgateway.getapis", APIKey=other.api_key, DomainID=other.domain_id)
    foreign = await api.call(
        "emailgateway.deleteapi", APIKey=acct.api_key, APIKeyID=theirs["APIKeys"][0]["APIKeyID"]
    )
    assert foreign["ErrorCode"] == 2


async def test_replaceapi_rotates_atomically(api: Api, services: Services) -> None:
    acct = await make_account(api)
    old_a = await sender_key(api, acct, "a")
    old_b = await sender_key(api, acct, "b")
    res = await api.call(
        "emailgateway.replaceapi",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Description="Rotated 2026-05-16",
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    key = res["APIKey"]
    assert set(key) == {
        "APIKeyID",
        "UserID",
        "DomainID",
        "CreatedAt",
        "APIKey",
        "Description",
        "Status",
        "Options",
    }
    assert key["APIKeyID"] == str(res["NewAPIKeyID"]) and isinstance(res["NewAPIKeyID"], int)
    assert key["UserID"] == str(acct.user_id) and key["DomainID"] == str(acct.domain_id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", key["CreatedAt"])
    assert key["Status"] == "Enabled" and key["Options"] == []
    assert key["Description"] == "Rotated 2026-05-16"
    for old in (old_a, old_b):
        status, _ = await api.request("GET", "/api/v1/webhooks", headers=bearer(old))
        assert status == 401
    status, _ = await api.request("GET", "/api/v1/webhooks", headers=bearer(key["APIKey"]))
    assert status == 200
    # Prior rows are gone, not soft-deleted: exactly one row for the slot.
    async with services.db.read() as conn:
        rows = (
            await conn.execute(select(t.api_keys).where(t.api_keys.c.domain_id == acct.domain_id))
        ).all()
    assert [r.id for r in rows] == [res["NewAPIKeyID"]]


async def test_replaceapi_without_prior_key_is_addapi(api: Api) -> None:
    acct = await make_account(api)
    res = await api.call(
        "emailgateway.replaceapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description="d"
    )
    assert res["Success"] is True
    listed = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert [k["APIKeyID"] for k in listed["APIKeys"]] == [res["NewAPIKeyID"]]


async def test_replaceapi_errors(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    key = acct.api_key
    assert (await api.call("emailgateway.replaceapi", APIKey=key, DomainID=acct.domain_id))[
        "ErrorCode"
    ] == 1
    assert (await api.call("emailgateway.replaceapi", APIKey=key, Description="d"))[
        "ErrorCode"
    ] == 2
    foreign = await api.call(
        "emailgateway.replaceapi", APIKey=key, DomainID=other.domain_id, Description="d"
    )
    assert foreign == {
        "Success": False,
        "ErrorCode": 3,
        "ErrorText": foreign["ErrorText"],
        "_status": 200,
    }


async def test_replaceapi_rolls_back_when_the_insert_fails(api: Api, services: Services) -> None:
    """Error 4, provoked for real: the database refuses the INSERT (a trigger), the DELETE
    of the prior keys is rolled back with it, and the old key keeps working."""
    acct = await make_account(api)
    old = await sender_key(api, acct, "keep me")
    async with services.db.write() as conn:
        if services.db.is_sqlite:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_keys BEFORE INSERT ON api_keys "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse_keys() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_keys BEFORE INSERT ON api_keys "
                "FOR EACH ROW EXECUTE FUNCTION refuse_keys()"
            )
    res = await api.call(
        "emailgateway.replaceapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description="n"
    )
    assert res["Success"] is False and res["ErrorCode"] == 4
    listed = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert [k["Description"] for k in listed["APIKeys"]] == ["keep me"]
    status, _ = await api.request("GET", "/api/v1/webhooks", headers=bearer(old))
    assert status == 200


async def test_keys_of_other_domains_are_untouched_by_replace(api: Api) -> None:
    acct = await make_account(api)
    second = await make_domain(api, acct.api_key, "second.example")
    await sender_key(api, acct, "first domain")
    res = await api.call(
        "emailgateway.addapi", APIKey=acct.api_key, DomainID=second, Description="second domain"
    )
    assert res["Success"]
    await api.call(
        "emailgateway.replaceapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description="n"
    )
    listed = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=second)
    assert [k["Description"] for k in listed["APIKeys"]] == ["second domain"]
