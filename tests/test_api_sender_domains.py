"""Conformance of the user sender-domain endpoints (seed 003) over real HTTP.

Each endpoint through its v1 route and as an /api.php command: the document's example
request, the success shape, every error code it documents with its HTTP status, DNS
verification against the DNS stub, rate limits (shared across nodes through Redis).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update

from relay import config
from relay.secrets import hash_secret
from relay.services import Services
from relay.store import schema as t
from relay.store.db import utcnow
from tests.conftest import Api
from tests.dnsstub import DnsStub
from tests.relayfix import admin_node

ONE = "/api/v1/user.senderdomain"
LIST = "/api/v1/user.senderdomains"
BODY_KEYS = [
    "DomainID",
    "SenderDomain",
    "UserID",
    "CreatedAt",
    "Status",
    "VerificationMeta",
    "PolicyMeta",
    "Options",
]
NOT_FOUND = {"Errors": [{"Code": 2, "Message": "Sender domain not found"}]}


@pytest.fixture
def settings(settings: config.Settings, dns_stub: DnsStub) -> config.Settings:
    settings.dns.nameservers = [dns_stub.nameserver]
    settings.dns.timeout = 1.0
    return settings


async def new_user(api: Api, services: Services, email: str = "owner@example.com") -> str:
    res = await api.call(
        "user.create", AdminAPIKey=services.settings.admin.api_key, EmailAddress=email
    )
    assert res["Success"] is True, res
    return str(res["APIKey"])


async def create(api: Api, key: str, domain: str = "example.com", **extra: Any) -> dict[str, Any]:
    status, body = await api.request(
        "POST", ONE, json={"APIKey": key, "SenderDomain": domain, **extra}
    )
    assert status == 200, body
    return dict(body)


def error(code: int, message: str) -> dict[str, Any]:
    return {"Errors": [{"Code": code, "Message": message}]}


# -- create ------------------------------------------------------------------------------------


async def test_create(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    # The document's example request.
    status, body = await api.request(
        "POST",
        ONE,
        json={
            "Command": "user.senderdomain.create",
            "APIKey": key,
            "SenderDomain": "example.com",
            "LinkTracking": True,
            "OpenTracking": True,
            "UnsubscribeLink": False,
        },
    )
    assert status == 200
    assert list(body) == ["Success", "DomainID", "SenderDomain"] and body["Success"] is True
    domain = body["SenderDomain"]
    assert isinstance(body["DomainID"], int) and domain["DomainID"] == str(body["DomainID"])
    assert list(domain) == BODY_KEYS
    assert domain["SenderDomain"] == "example.com" and domain["Status"] == "Approval Pending"
    assert isinstance(domain["UserID"], str) and len(domain["CreatedAt"]) == 19
    assert domain["PolicyMeta"] == []
    assert domain["Options"] == {"LinkTracking": 1, "OpenTracking": 1, "UnsubscribeLink": 0}
    # Never probed: [type, value] without a verified flag.
    assert domain["VerificationMeta"]["DNSRecords"] == {
        "mail.example.com": ["CNAME", "relay.test."],
        "track-mail.example.com": ["CNAME", "relay.test."],
        "_dmarc.example.com": ["TXT", "v=DMARC1; p=none; rua=mailto:postmaster@example.com"],
    }

    # Overrides, and the /api.php spelling with form-style values.
    res = await api.call(
        "user.senderdomain.create",
        APIKey=key,
        SenderDomain="Example.ORG",
        LinkTracking="0",
        CustomSubdomain="sl",
        CustomTrackPrefix="track",
    )
    assert res["Success"] is True and res["_status"] == 200
    assert res["SenderDomain"]["Options"] == {
        "LinkTracking": 0,
        "OpenTracking": 1,
        "UnsubscribeLink": 0,
        "CustomSubdomain": "sl",
        "CustomTrackPrefix": "track",
    }
    assert set(res["SenderDomain"]["VerificationMeta"]["DNSRecords"]) == {
        "sl.example.org",
        "track-sl.example.org",
        "_dmarc.example.org",
    }


async def test_create_refreshes_a_deleted_domain(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    first = await create(api, key, CustomSubdomain="sl")
    domain_id = first["DomainID"]
    async with services.db.write() as conn:
        await conn.execute(update(t.user_sender_domains).values(status="Enabled"))
    status, _ = await api.request("DELETE", ONE, params={"APIKey": key, "DomainID": domain_id})
    assert status == 200
    again = await create(api, key, CustomSubdomain="em")
    # The same row comes back (ON DUPLICATE KEY UPDATE), Approval Pending, new options.
    assert again["DomainID"] == domain_id
    assert again["SenderDomain"]["Status"] == "Approval Pending"
    assert again["SenderDomain"]["Options"]["CustomSubdomain"] == "em"
    assert "em.example.com" in again["SenderDomain"]["VerificationMeta"]["DNSRecords"]


async def test_create_errors(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    for body, status, expected in (
        ({}, 400, error(1, "Missing SenderDomain parameter")),
        ({"SenderDomain": "localhost"}, 400, error(4, "localhost is not a valid sender domain")),
        ({"SenderDomain": "mail.localhost"}, 400, None),
        ({"SenderDomain": "not a domain"}, 400, None),
        ({"SenderDomain": "example.com", "CustomSubdomain": "-sl"}, 400, None),
        ({"SenderDomain": "example.com", "CustomTrackPrefix": "x" * 33}, 400, None),
        ({"SenderDomain": "example.com", "LinkTracking": "perhaps"}, 400, None),
    ):
        got_status, got = await api.request("POST", ONE, json={"APIKey": key, **body})
        assert got_status == status, body
        if expected is not None:
            assert got == expected
    codes = []
    for body in (
        {"SenderDomain": "mail.localhost"},
        {"SenderDomain": "not a domain"},
        {"SenderDomain": "example.com", "CustomSubdomain": "-sl"},
        {"SenderDomain": "example.com", "CustomTrackPrefix": "x" * 33},
    ):
        _s, got = await api.request("POST", ONE, json={"APIKey": key, **body})
        codes.append(got["Errors"][0]["Code"])
    assert codes == [4, 7, 6, 6]
    # Nothing was created by any of these.
    _s, listing = await api.request("GET", LIST, params={"APIKey": key})
    assert listing == {"Success": True, "SenderDomains": []}

    # 5: the account's limit (the group's MaxSenderDomains), HTTP 403.
    async with services.db.write() as conn:
        await conn.execute(
            update(t.user_groups).where(t.user_groups.c.id == 1).values(max_sender_domains=1)
        )
    await create(api, key, "one.example.com")
    status, got = await api.request(
        "POST", ONE, json={"APIKey": key, "SenderDomain": "two.example.com"}
    )
    assert (status, got) == (403, error(5, "Sender domain limit reached for your account"))
    # Re-creating the domain one already has is a refresh, not one more domain.
    await create(api, key, "one.example.com")


# -- list / get --------------------------------------------------------------------------------


async def test_list_and_get(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    other = await new_user(api, services, "other@example.com")
    # The document's example requests.
    status, body = await api.request("GET", f"{LIST}?APIKey={key}")
    assert (status, body) == (200, {"Success": True, "SenderDomains": []})
    a = await create(api, key, "a.example.com")
    b = await create(api, key, "b.example.com", CustomSubdomain="sl")
    await create(api, other, "theirs.example.com")
    status, body = await api.request("GET", f"{LIST}?APIKey={key}")
    assert status == 200
    assert [d["SenderDomain"] for d in body["SenderDomains"]] == ["a.example.com", "b.example.com"]
    assert all(list(d) == BODY_KEYS for d in body["SenderDomains"])
    res = await api.call("user.senderdomain.list", APIKey=key)
    assert res["SenderDomains"] == body["SenderDomains"]

    status, body = await api.request("GET", f"{ONE}?APIKey={key}&DomainID={b['DomainID']}")
    assert (status, list(body)) == (200, ["Success", "SenderDomain"])
    assert body["SenderDomain"] == b["SenderDomain"]
    res = await api.call("user.senderdomain.get", APIKey=key, DomainID=a["DomainID"])
    assert res["SenderDomain"]["SenderDomain"] == "a.example.com"

    # Errors: 1 missing, 2 unknown / not a number / someone else's (never "forbidden").
    status, body = await api.request("GET", f"{ONE}?APIKey={key}")
    assert (status, body) == (400, error(1, "Missing DomainID parameter"))
    for domain_id in ("999999", "abc"):
        status, body = await api.request("GET", ONE, params={"APIKey": key, "DomainID": domain_id})
        assert (status, body) == (404, NOT_FOUND)
    status, body = await api.request(
        "GET", ONE, params={"APIKey": other, "DomainID": a["DomainID"]}
    )
    assert (status, body) == (404, NOT_FOUND)


async def test_authentication(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    await create(api, key)
    for params in ({}, {"APIKey": "wrong"}, {"SessionID": "wrong"}):
        status, body = await api.request("GET", LIST, params=params)
        assert (status, body) == (401, error(0, "Authentication failed"))
    # A SessionID works like the APIKey.
    session_id = uuid.uuid4().hex
    async with services.db.write() as conn:
        user_id = (
            await conn.execute(
                select(t.users.c.id).where(t.users.c.api_key_hash == hash_secret(key))
            )
        ).scalar_one()
        await conn.execute(
            insert(t.sessions).values(
                id_hash=hash_secret(session_id),
                user_id=user_id,
                expires_at=time.time() + 3600,
                created_at=utcnow(),
            )
        )
    status, body = await api.request("GET", LIST, params={"SessionID": session_id})
    assert status == 200 and len(body["SenderDomains"]) == 1


# -- update ------------------------------------------------------------------------------------


async def test_update(api: Api, services: Services, dns_stub: DnsStub) -> None:
    key = await new_user(api, services)
    made = await create(api, key, CustomSubdomain="sl")
    domain_id = made["DomainID"]
    dns_stub.cname("sl.example.com", "relay.test")
    dns_stub.cname("track-sl.example.com", "relay.test")
    verified = await api.request(
        "POST", f"{ONE}.verify", json={"APIKey": key, "DomainID": domain_id}
    )
    assert verified[1]["Status"] == "Enabled"

    # The document's example request.
    status, body = await api.request(
        "PATCH",
        ONE,
        json={
            "Command": "user.senderdomain.update",
            "APIKey": key,
            "DomainID": domain_id,
            "CustomSubdomain": "em",
            "UseTrackingSubdomain": True,
        },
    )
    assert status == 200
    assert list(body) == ["Success", "DnsRegenerated", "SenderDomain"]
    assert body["Success"] is True and body["DnsRegenerated"] is True
    domain = body["SenderDomain"]
    assert domain["Status"] == "Approval Pending"
    assert domain["Options"] == {
        "LinkTracking": 1,
        "OpenTracking": 1,
        "UnsubscribeLink": 0,
        "CustomSubdomain": "em",
        "TrackPrefixDisabled": False,
    }
    assert domain["VerificationMeta"]["DNSRecords"] == {
        "em.example.com": ["CNAME", "relay.test."],
        "track-em.example.com": ["CNAME", "relay.test."],
        "_dmarc.example.com": ["TXT", "v=DMARC1; p=none; rua=mailto:postmaster@example.com"],
    }

    # Partial: only the fields given change; no DNS-affecting change, no regeneration.
    status, body = await api.request(
        "PATCH", ONE, json={"APIKey": key, "DomainID": domain_id, "LinkTracking": False}
    )
    assert status == 200 and body["DnsRegenerated"] is False
    assert body["SenderDomain"]["Options"]["LinkTracking"] == 0
    assert body["SenderDomain"]["Options"]["CustomSubdomain"] == "em"

    # UseTrackingSubdomain false drops the tracking record; via /api.php too.
    res = await api.call(
        "user.senderdomain.update", APIKey=key, DomainID=domain_id, UseTrackingSubdomain=0
    )
    assert res["DnsRegenerated"] is True
    assert res["SenderDomain"]["Options"]["TrackPrefixDisabled"] is True
    assert "track-em.example.com" not in res["SenderDomain"]["VerificationMeta"]["DNSRecords"]

    # PATCH reads the JSON body only: query-string parameters are ignored.
    status, body = await api.request(
        "PATCH", f"{ONE}?APIKey={key}&DomainID={domain_id}", json={"LinkTracking": True}
    )
    assert (status, body) == (401, error(0, "Authentication failed"))
    status, body = await api.request(
        "PATCH", f"{ONE}?DomainID={domain_id}", json={"APIKey": key, "LinkTracking": True}
    )
    assert (status, body) == (400, error(1, "Missing DomainID parameter"))


async def test_update_errors(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    other = await new_user(api, services, "other@example.com")
    domain_id = (await create(api, key))["DomainID"]
    status, body = await api.request("PATCH", ONE, json={"APIKey": key, "LinkTracking": 1})
    assert (status, body) == (400, error(1, "Missing DomainID parameter"))
    status, body = await api.request("PATCH", ONE, json={"APIKey": other, "DomainID": domain_id})
    assert (status, body) == (404, NOT_FOUND)
    status, body = await api.request(
        "PATCH", ONE, json={"APIKey": key, "DomainID": domain_id, "CustomSubdomain": "em_"}
    )
    assert (status, body["Errors"][0]["Code"]) == (400, 6)
    assert body["Errors"][0]["Message"].startswith("Invalid CustomSubdomain.")
    status, body = await api.request(
        "PATCH",
        ONE,
        json={"APIKey": key, "DomainID": domain_id, "LinkTracking": 0, "CustomTrackPrefix": "-"},
    )
    assert (status, body["Errors"][0]["Code"]) == (400, 6)
    # Nothing half-written.
    _s, got = await api.request("GET", ONE, params={"APIKey": key, "DomainID": domain_id})
    assert got["SenderDomain"]["Options"]["LinkTracking"] == 1


# -- delete ------------------------------------------------------------------------------------


async def test_delete(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    other = await new_user(api, services, "other@example.com")
    domain_id = (await create(api, key))["DomainID"]
    status, body = await api.request("DELETE", ONE, params={"APIKey": other, "DomainID": domain_id})
    assert (status, body) == (404, NOT_FOUND)
    # The document's example request.
    status, body = await api.request("DELETE", f"{ONE}?APIKey={key}&DomainID={domain_id}")
    assert (status, body) == (200, {"Success": True})
    # Soft: the row stays, Deleted; Get and List no longer show it.
    async with services.db.read() as conn:
        status_in_db = await conn.scalar(select(t.user_sender_domains.c.status))
    assert status_in_db == "Deleted"
    assert (await api.request("GET", ONE, params={"APIKey": key, "DomainID": domain_id})) == (
        404,
        NOT_FOUND,
    )
    assert (await api.request("GET", LIST, params={"APIKey": key}))[1]["SenderDomains"] == []
    assert (await api.request("DELETE", ONE, params={"APIKey": key, "DomainID": domain_id})) == (
        404,
        NOT_FOUND,
    )
    assert (await api.request("DELETE", ONE, params={"APIKey": key})) == (
        400,
        error(1, "Missing DomainID parameter"),
    )
    second = (await create(api, key, "example.org"))["DomainID"]
    res = await api.call("user.senderdomain.delete", APIKey=key, DomainID=second)
    assert res == {"Success": True, "_status": 200}


# -- verify / dns ------------------------------------------------------------------------------


async def test_verify_and_dns(api: Api, services: Services, dns_stub: DnsStub) -> None:
    key = await new_user(api, services)
    domain_id = (await create(api, key, CustomSubdomain="sl"))["DomainID"]

    # Never probed: IsVerified null.
    status, body = await api.request("GET", f"{ONE}.dns?APIKey={key}&DomainID={domain_id}")
    assert status == 200
    assert body == {
        "Success": True,
        "DomainID": domain_id,
        "SenderDomain": "example.com",
        "DNSRecords": {
            "sl.example.com": {"Type": "CNAME", "Value": "relay.test.", "IsVerified": None},
            "track-sl.example.com": {"Type": "CNAME", "Value": "relay.test.", "IsVerified": None},
            "_dmarc.example.com": {
                "Type": "TXT",
                "Value": "v=DMARC1; p=none; rua=mailto:postmaster@example.com",
                "IsVerified": None,
            },
        },
    }

    # Wrong records first.
    dns_stub.cname("sl.example.com", "relay.test")
    dns_stub.cname("track-sl.example.com", "somewhere-else.test")
    status, body = await api.request(
        "POST",
        f"{ONE}.verify",
        json={"Command": "user.senderdomain.verify", "APIKey": key, "DomainID": domain_id},
    )
    assert status == 200
    assert list(body) == ["Success", "DomainID", "IsVerified", "Status", "DNSRecords"]
    assert body["IsVerified"] is False and body["Status"] == "Approval Pending"
    assert body["DNSRecords"]["sl.example.com"] == ["CNAME", "relay.test.", True]
    assert body["DNSRecords"]["track-sl.example.com"] == ["CNAME", "relay.test.", False]
    _s, dns_view = await api.request(
        "GET", f"{ONE}.dns", params={"APIKey": key, "DomainID": domain_id}
    )
    flags = {h: r["IsVerified"] for h, r in dns_view["DNSRecords"].items()}
    assert flags == {
        "sl.example.com": True,
        "track-sl.example.com": False,
        "_dmarc.example.com": False,
    }

    # Fixed in DNS, but answers are cached 60 s: the same outcome in quick succession.
    dns_stub.remove("track-sl.example.com")
    dns_stub.cname("track-sl.example.com", "RELAY.test.")
    res = await api.call("user.senderdomain.verify", APIKey=key, DomainID=domain_id)
    assert res["IsVerified"] is False and res["_status"] == 200

    # A DNS-affecting update drops the cache; the new layout verifies (DMARC is advisory).
    await api.request(
        "PATCH", ONE, json={"APIKey": key, "DomainID": domain_id, "CustomTrackPrefix": "t"}
    )
    dns_stub.cname("t-sl.example.com", "relay.test")
    status, body = await api.request(
        "POST", f"{ONE}.verify", json={"APIKey": key, "DomainID": domain_id}
    )
    assert body["IsVerified"] is True and body["Status"] == "Enabled"
    assert body["DNSRecords"]["_dmarc.example.com"][2] is False
    _s, got = await api.request("GET", ONE, params={"APIKey": key, "DomainID": domain_id})
    assert got["SenderDomain"]["Status"] == "Enabled"
    assert got["SenderDomain"]["VerificationMeta"]["DNSRecords"] == body["DNSRecords"]

    # Unchanged outcome: no database write at all.
    updates: list[str] = []

    def spy(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", spy)
    try:
        again = await api.call("user.senderdomain.verify", APIKey=key, DomainID=domain_id)
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert again["IsVerified"] is True and updates == []


async def test_verify_survives_dns_failures(
    api: Api, services: Services, dns_stub: DnsStub
) -> None:
    key = await new_user(api, services)
    domain_id = (await create(api, key))["DomainID"]
    dns_stub.servfail("mail.example.com")
    dns_stub.drop("track-mail.example.com")
    status, body = await api.request(
        "POST", f"{ONE}.verify", json={"APIKey": key, "DomainID": domain_id}
    )
    assert status == 200 and body["Success"] is True
    assert body["IsVerified"] is False and body["Status"] == "Approval Pending"


async def test_verify_and_dns_errors(api: Api, services: Services) -> None:
    key = await new_user(api, services)
    other = await new_user(api, services, "other@example.com")
    domain_id = (await create(api, key))["DomainID"]
    for method, path in (("POST", f"{ONE}.verify"), ("GET", f"{ONE}.dns")):
        kwargs: dict[str, Any] = {}
        status, body = await api.request(method, path, params={"APIKey": key}, **kwargs)
        assert (status, body) == (400, error(1, "Missing DomainID parameter")), path
        status, body = await api.request(
            method, path, params={"APIKey": other, "DomainID": domain_id}
        )
        assert (status, body) == (404, NOT_FOUND), path
    res = await api.call("user.senderdomain.dns", APIKey=key, DomainID=123456)
    assert res["Errors"] == NOT_FOUND["Errors"] and res["_status"] == 404


# -- rate limits and several nodes -------------------------------------------------------------


@pytest.mark.redis
async def test_rate_limit_and_dns_cache_are_shared_by_nodes(
    settings: config.Settings, redis_url: str, dns_stub: DnsStub
) -> None:
    settings.redis.url = redis_url
    async with admin_node(settings) as (_, a), admin_node(settings) as (_, b):
        res = await a.call(
            "user.create", AdminAPIKey=settings.admin.api_key, EmailAddress="o@example.com"
        )
        key = res["APIKey"]
        domain_id = (await create(a, key))["DomainID"]
        dns_stub.cname("mail.example.com", "relay.test")
        dns_stub.cname("track-mail.example.com", "relay.test")
        _s, first = await a.request(
            "POST", f"{ONE}.verify", json={"APIKey": key, "DomainID": domain_id}
        )
        assert first["IsVerified"] is True
        # Node B answers from the shared cache: DNS is not asked again.
        asked = len(dns_stub.queries)
        dns_stub.clear()
        _s, second = await b.request(
            "POST", f"{ONE}.verify", json={"APIKey": key, "DomainID": domain_id}
        )
        assert second["DNSRecords"] == first["DNSRecords"] and dns_stub.queries == []
        assert asked > 0

        # 100 requests per 60 s per user, counted across nodes.
        used = 3  # create + two verifies
        for i in range(100 - used):
            node_api = a if i % 2 else b
            status, _ = await node_api.request("GET", LIST, params={"APIKey": key})
            assert status == 200, i
        status, body = await a.request("GET", LIST, params={"APIKey": key})
        assert status == 429 and body["Errors"][0]["Code"] == 429
        status, body = await b.request("GET", ONE, params={"APIKey": key, "DomainID": domain_id})
        assert status == 429
