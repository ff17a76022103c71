"""Conformance of the gateway-domain commands (seed 001; 002 spellings) over real HTTP.

Each command: the documents' example request, the documented success shape, every
documented error code provoked for real. Verification runs against the DNS stub.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update

from relay import config, events
from relay.admin.auth import sender_key_from
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.secrets import hash_secret
from relay.services import Services
from relay.store import schema as t
from relay.store.db import utcnow
from tests.conftest import Api
from tests.dnsstub import DnsStub


@pytest.fixture
def settings(settings: config.Settings, dns_stub: DnsStub) -> config.Settings:
    """Every lookup goes to the DNS stub."""
    settings.dns.nameservers = [dns_stub.nameserver]
    settings.dns.timeout = 1.0
    return settings


async def new_user(api: Api, email: str = "owner@example.com") -> str:
    res = await api.call("user.create", admin=True, EmailAddress=email)
    assert res["Success"] is True, res
    return str(res["APIKey"])


async def add_domain(api: Api, key: str, name: str = "example.com", **extra: Any) -> int:
    res = await api.call("emailgateway.adddomain", APIKey=key, DomainName=name, **extra)
    assert res["Success"] is True, res
    return int(res["NewSenderDomainID"])


async def enable(api: Api, domain_id: int) -> None:
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Enabled"
    )
    assert res["Domain"]["Status"] == "Enabled"


RelayCheck = Callable[[str], Awaitable[bool]]


@pytest.fixture
def relay_allowed(api: Api, services: Services) -> RelayCheck:
    """Does the MX check (over HTTP, admin key as Bearer) allow this domain?"""

    async def check(domain: str) -> bool:
        status, _ = await api.request(
            "GET",
            "/api/v1/inbound-relay-domain-check",
            params={"domain": domain},
            headers={"Authorization": f"Bearer {services.settings.admin.api_key}"},
        )
        assert status in (200, 500)
        return status == 200

    return check


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    """The SQL statements the database runs inside the block."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


# -- emailgateway.updatedomain ------------------------------------------------------------------


async def test_updatedomain(api: Api, relay_allowed: RelayCheck) -> None:
    key = await new_user(api)
    domain_id = await add_domain(api, key)
    await enable(api, domain_id)
    assert await relay_allowed("example.com")

    # 001's example request.
    res = await api.call(
        "emailgateway.updatedomain",
        APIKey=key,
        DomainID=domain_id,
        LinkTracking=1,
        OpenTracking=1,
        Subdomain="outbound",
        TrackPrefixDisabled=1,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["SubdomainChanged"] is True
    domain = res["Domain"]
    assert domain["DomainID"] == domain_id and domain["SenderDomain"] == "example.com"
    assert domain["Status"] == "Approval Pending"
    assert domain["Options"] == {
        "LinkTracking": 1,
        "OpenTracking": 1,
        "UnsubscribeLink": 0,
        "CustomSubdomain": "outbound",
        "TrackPrefixDisabled": True,
    }
    records = res["DNSRecords"]
    assert records["outbound.example.com"] == ["CNAME", "relay.test", False]
    assert "mail.example.com" not in records
    assert not any(h.startswith("track") for h in records)
    # No longer Enabled: the MX check stops relaying for it at once.
    assert not await relay_allowed("example.com")

    # Partial: only LinkTracking changes; records and status stay.
    res = await api.call(
        "emailgateway.updatedomain", APIKey=key, DomainID=domain_id, LinkTracking=0
    )
    assert res["SubdomainChanged"] is False
    assert res["Domain"]["Options"]["LinkTracking"] == 0
    assert res["Domain"]["Options"]["CustomSubdomain"] == "outbound"
    assert res["DNSRecords"] == records

    # An empty Subdomain returns to the global default ("mail"); 0 re-enables tracking.
    res = await api.call(
        "emailgateway.updatedomain",
        APIKey=key,
        DomainID=domain_id,
        Subdomain="",
        TrackPrefixDisabled=0,
        TrackPrefix="links",
    )
    assert res["SubdomainChanged"] is True
    assert "CustomSubdomain" not in res["Domain"]["Options"]
    assert res["Domain"]["Options"]["CustomTrackPrefix"] == "links"
    assert res["Domain"]["Options"]["TrackPrefixDisabled"] is False
    assert {"mail.example.com", "links-mail.example.com"} <= set(res["DNSRecords"])

    # 002's spelling: EmailGateway.UpdateDomain, string values, HostingProvider.
    res = await api.call(
        "EmailGateway.UpdateDomain",
        APIKey=key,
        DomainID=str(domain_id),
        LinkTracking="1",
        OpenTracking="1",
        UnsubscribeLink="1",
        HostingProvider="YourHostingProvider",
        Subdomain="mail",
    )
    assert res["Success"] is True and res["SubdomainChanged"] is False
    assert res["Domain"]["Options"]["UnsubscribeLink"] == 1
    assert res["Domain"]["Options"]["HostingProvider"] == "YourHostingProvider"
    got = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)
    assert got["Domain"]["Options"] == res["Domain"]["Options"]


async def test_updatedomain_keeps_a_disabled_domain_disabled(api: Api) -> None:
    key = await new_user(api)
    domain_id = await add_domain(api, key)
    await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Disabled"
    )
    res = await api.call(
        "emailgateway.updatedomain", APIKey=key, DomainID=domain_id, Subdomain="other"
    )
    assert res["SubdomainChanged"] is True and res["Domain"]["Status"] == "Disabled"


async def test_updatedomain_errors(api: Api) -> None:
    key = await new_user(api)
    other = await new_user(api, "other@example.com")
    domain_id = await add_domain(api, key)
    before = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)

    async def code(**params: Any) -> Any:
        res = await api.call("emailgateway.updatedomain", **params)
        assert res["Success"] is False and res["_status"] == 200
        return res["ErrorCode"]

    assert await code(APIKey=key, LinkTracking=1) == 1
    assert await code(APIKey=key, DomainID=999999) == 5
    assert await code(APIKey=key, DomainID="abc") == 5
    assert await code(APIKey=other, DomainID=domain_id, LinkTracking=0) == 5
    for bad in (
        {"Subdomain": "-outbound"},
        {"Subdomain": "out_bound"},
        {"TrackPrefix": "x" * 33},
        {"TrackMerge": "+"},
        {"TrackPrefixDisabled": "maybe"},
        {"LinkTracking": "sometimes"},
        # A valid change with an invalid one: nothing is written.
        {"LinkTracking": 0, "Subdomain": "bad.label"},
    ):
        assert await code(APIKey=key, DomainID=domain_id, **bad) == 6, bad
    after = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)
    assert after == before


# -- emailgateway.verifydomain ------------------------------------------------------------------


async def test_verifydomain_with_correct_records(
    api: Api, dns_stub: DnsStub, services: Services, relay_allowed: RelayCheck
) -> None:
    # The default key size (tests use 1024 bits): its record is longer than one TXT string.
    services.settings.dkim.key_bits = 2048
    key = await new_user(api)
    added = await api.call(
        "emailgateway.adddomain", APIKey=key, DomainName="example.com", Subdomain="outbound"
    )
    domain_id = added["NewSenderDomainID"]
    records = added["DNSRecords"]
    dkim_host = next(h for h in records if "._domainkey." in h)
    assert len(records[dkim_host][1]) > 255  # served as several character-strings
    dns_stub.publish(records)
    assert not await relay_allowed("example.com")

    # 001's example request.
    res = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["Domain"] == {
        "DomainID": domain_id,
        "SenderDomain": "example.com",
        "Status": "Enabled",
    }
    results = res["DNSVerificationResults"]
    assert set(results) == set(records)
    for host, (rtype, value, verified) in results.items():
        assert [rtype, value] == records[host][:2]
        # DMARC is advisory: reported (not published here), never required.
        assert verified is (not host.startswith("_dmarc."))
    # Persisted, and the MX check relays for it now.
    got = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)
    assert got["Domain"]["Status"] == "Enabled" and got["DNSRecords"] == results
    assert await relay_allowed("user@Example.COM")

    # Nothing changed: the second call writes nothing and asks DNS nothing (cached).
    asked = len(dns_stub.queries)
    with statements(services) as seen:
        again = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert again["DNSVerificationResults"] == results
    assert not [s for s in seen if s.lstrip().upper().startswith("UPDATE")]
    assert len(dns_stub.queries) == asked

    # 002's spelling.
    legacy = await api.call("EmailGateway.VerifyDomain", APIKey=key, DomainID=str(domain_id))
    assert legacy["Domain"]["Status"] == "Enabled"


async def test_verifydomain_with_wrong_records(api: Api, dns_stub: DnsStub) -> None:
    key = await new_user(api)
    added = await api.call("emailgateway.adddomain", APIKey=key, DomainName="example.org")
    domain_id = added["NewSenderDomainID"]
    records = added["DNSRecords"]
    dkim_host = next(h for h in records if "._domainkey." in h)
    dns_stub.txt(dkim_host, "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong")
    dns_stub.txt("example.org", "v=spf1 include:someone-else.test ~all")
    dns_stub.cname("mail.example.org", "elsewhere.test")
    # The tracking host is right: one good record is not enough.
    dns_stub.cname("track-mail.example.org", "relay.test")
    res = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert res["Success"] is True
    assert res["Domain"]["Status"] == "Approval Pending"
    flags = {h: r[2] for h, r in res["DNSVerificationResults"].items()}
    assert flags == {
        dkim_host: False,
        "example.org": False,
        "mail.example.org": False,
        "track-mail.example.org": True,
        "_dmarc.example.org": False,
    }
    got = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)
    assert {h: r[2] for h, r in got["DNSRecords"].items()} == flags

    # Fixed in DNS: within the cache TTL the answer stays the same (documented); changing
    # the subdomain drops the cached answers for the domain's hosts.
    dns_stub.publish(records)
    dns_stub.remove("example.org")
    dns_stub.txt("example.org", records["example.org"][1])
    same = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert same["Domain"]["Status"] == "Approval Pending"
    upd = await api.call(
        "emailgateway.updatedomain", APIKey=key, DomainID=domain_id, Subdomain="rp"
    )
    dns_stub.publish(upd["DNSRecords"])
    ok = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert ok["Domain"]["Status"] == "Enabled"


async def test_verifydomain_dns_failures(api: Api, dns_stub: DnsStub) -> None:
    key = await new_user(api)
    added = await api.call("emailgateway.adddomain", APIKey=key, DomainName="example.net")
    domain_id = added["NewSenderDomainID"]
    dns_stub.publish(added["DNSRecords"])
    dns_stub.servfail("mail.example.net")
    dns_stub.drop("track-mail.example.net")
    res = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert res["Success"] is True and res["Domain"]["Status"] == "Approval Pending"
    results = res["DNSVerificationResults"]
    assert results["mail.example.net"][2] is False
    assert results["track-mail.example.net"][2] is False
    assert results["example.net"][2] is True


async def test_verifydomain_errors(api: Api) -> None:
    key = await new_user(api)
    other = await new_user(api, "other@example.com")
    domain_id = await add_domain(api, key)
    for params, code in (
        ({"APIKey": key}, 1),
        ({"APIKey": key, "DomainID": 999999}, 2),
        ({"APIKey": other, "DomainID": domain_id}, 2),
    ):
        res = await api.call("emailgateway.verifydomain", **params)
        assert res == {
            "Success": False,
            "ErrorCode": code,
            "ErrorText": res["ErrorText"],
            "_status": 200,
        }


# -- emailgateway.getdomains --------------------------------------------------------------------

LEGACY_KEYS = [
    "DomainID",
    "SenderDomain",
    "CreatedAt",
    "Status",
    "VerificationMeta",
    "PolicyMeta",
    "Options",
]
ENRICHED_KEYS = [
    *LEGACY_KEYS,
    "APIKeyCount",
    "SMTPCount",
    "WebhookCount",
    "Sent7d",
    "BounceRate7d",
    "LastActivityAt",
]


async def seed_resources(services: Services, user_id: int, domain_id: int) -> None:
    """API keys and webhooks are another family's commands: rows written directly."""
    now = time.time()
    async with services.db.write() as conn:
        for status in ("Enabled", "Disabled"):
            await conn.execute(
                insert(t.api_keys).values(
                    user_id=user_id,
                    domain_id=domain_id,
                    key_hash=hash_secret(uuid.uuid4().hex),
                    key_hint="xxxx",
                    status=status,
                    options={},
                    created_at=utcnow(),
                )
            )
        for status in ("Enabled", "Enabled", "Deleted"):
            await conn.execute(
                insert(t.webhooks).values(
                    user_id=user_id,
                    domain_id=domain_id,
                    event="delivered",
                    url="https://hooks.example.com/x",
                    status=status,
                    created_at=utcnow(),
                )
            )
        rows = [
            *[(events.ACCEPTED, now - 3600)] * 200,
            *[(events.BOUNCED, now - 1800)] * 3,
            (events.DELIVERED, now - 60),
            (events.ACCEPTED, now - 8 * 86400),  # outside the 7-day window
        ]
        await conn.execute(
            insert(t.events),
            [
                {"created_at": ts, "user_id": user_id, "domain_id": domain_id, "event": name}
                for name, ts in rows
            ],
        )


async def user_id_of(services: Services, key: str) -> int:
    async with services.db.read() as conn:
        q = select(t.users.c.id).where(t.users.c.api_key_hash == hash_secret(key))
        return int((await conn.execute(q)).scalar_one())


async def test_getdomains(api: Api, services: Services) -> None:
    key = await new_user(api)
    user_id = await user_id_of(services, key)
    busy = await add_domain(api, key, "mail.apex.com")
    await add_domain(api, key, "quiet.example.com")
    gone = await add_domain(api, key, "gone.example.com")
    await api.call("emailgateway.deletedomain", APIKey=key, DomainID=gone)
    other_key = await new_user(api, "other@example.com")
    await add_domain(api, other_key, "other.example.com")
    for _ in range(2):
        await api.call("emailgateway.addsmtp", APIKey=key, DomainID=busy)
    await seed_resources(services, user_id, busy)
    await enable(api, busy)

    # 001's first example: the legacy shape, byte for byte.
    res = await api.call("emailgateway.getdomains", APIKey=key)
    assert list(res) == ["Success", "Domains", "_status"] and res["Success"] is True
    rows = res["Domains"]
    assert [r["SenderDomain"] for r in rows] == ["mail.apex.com", "quiet.example.com"]
    for row in rows:
        assert list(row) == LEGACY_KEYS
        assert isinstance(row["DomainID"], str)
        assert len(row["CreatedAt"]) == 19 and row["CreatedAt"][10] == " "
        assert row["PolicyMeta"] == []
        assert set(row["VerificationMeta"]) == {"DNSRecords"}
        assert row["Options"] == {"LinkTracking": 1, "OpenTracking": 1, "UnsubscribeLink": 0}
    assert rows[0]["DomainID"] == str(busy) and rows[0]["Status"] == "Enabled"

    # 001's second example: WithCounts=1.
    res = await api.call("emailgateway.getdomains", APIKey=key, WithCounts=1)
    busy_row, quiet_row = res["Domains"]
    assert list(busy_row) == ENRICHED_KEYS
    assert busy_row["APIKeyCount"] == 1
    assert busy_row["SMTPCount"] == 2
    assert busy_row["WebhookCount"] == 2
    assert busy_row["Sent7d"] == 200
    assert busy_row["BounceRate7d"] == 1.5
    last = busy_row["LastActivityAt"]
    assert isinstance(last, str) and last.endswith("Z") and "T" in last
    assert {k: quiet_row[k] for k in ENRICHED_KEYS[7:]} == {
        "APIKeyCount": 0,
        "SMTPCount": 0,
        "WebhookCount": 0,
        "Sent7d": 0,
        "BounceRate7d": 0,
        "LastActivityAt": None,
    }

    # Truthy exactly as documented; anything else keeps the legacy shape.
    for value in (1, "1", "true", "yes", True):
        res = await api.call("emailgateway.getdomains", APIKey=key, WithCounts=value)
        assert list(res["Domains"][0]) == ENRICHED_KEYS, value
    falsy: tuple[Any, ...] = (0, "0", "false", "garbage", "on", 2, False, None)
    for value in falsy:
        res = await api.call("emailgateway.getdomains", APIKey=key, WithCounts=value)
        assert list(res["Domains"][0]) == LEGACY_KEYS, value

    # 002's spelling.
    res = await api.call("EmailGateway.GetDomains", APIKey=key)
    assert len(res["Domains"]) == 2


async def test_getdomains_counts_cost_the_same_for_any_number_of_domains(
    api: Api, services: Services
) -> None:
    key = await new_user(api)

    async def queries() -> int:
        with statements(services) as seen:
            res = await api.call("emailgateway.getdomains", APIKey=key, WithCounts=1)
        assert res["Success"] is True
        return len(seen)

    await add_domain(api, key, "one.example.com")
    few = await queries()
    for i in range(4):
        await add_domain(api, key, f"d{i}.example.com")
    assert await queries() == few


# -- emailgateway.deletedomain ------------------------------------------------------------------


async def test_deletedomain(api: Api, services: Services, relay_allowed: RelayCheck) -> None:
    key = await new_user(api)
    user_id = await user_id_of(services, key)
    domain_id = await add_domain(api, key)
    smtp = await api.call("emailgateway.addsmtp", APIKey=key, DomainID=domain_id)
    username = smtp["SMTP"]["SMTPUsername"]
    sender_key = "sk_" + uuid.uuid4().hex
    async with services.db.write() as conn:
        await conn.execute(
            insert(t.api_keys).values(
                user_id=user_id,
                domain_id=domain_id,
                key_hash=hash_secret(sender_key),
                key_hint="xxxx",
                status="Enabled",
                options={},
                created_at=utcnow(),
            )
        )
    await enable(api, domain_id)
    assert await services.directory.credential(username) is not None  # now cached
    assert await sender_key_from(services, sender_key) is not None
    assert await relay_allowed("example.com")

    # 001's example request.
    res = await api.call("emailgateway.deletedomain", APIKey=key, DomainID=domain_id)
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    assert (await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id))[
        "ErrorCode"
    ] == 2
    # Kept as a row (soft delete), its credentials and keys dead, the MX check says no.
    async with services.db.read() as conn:
        status = await conn.scalar(
            select(t.gateway_domains.c.status).where(t.gateway_domains.c.id == domain_id)
        )
    assert status == "Deleted"
    assert await services.directory.credential(username) is None
    assert await sender_key_from(services, sender_key) is None
    assert not await relay_allowed("example.com")
    # Deleting again: not found. The same name can be added again.
    again = await api.call("emailgateway.deletedomain", APIKey=key, DomainID=domain_id)
    assert again["ErrorCode"] == 2
    assert await add_domain(api, key) != domain_id

    # 002's spelling.
    second = await add_domain(api, key, "example.org")
    res = await api.call("EmailGateway.DeleteDomain", APIKey=key, DomainID=str(second))
    assert res["Success"] is True


async def test_deletedomain_errors(api: Api) -> None:
    key = await new_user(api)
    other = await new_user(api, "other@example.com")
    domain_id = await add_domain(api, key)
    assert (await api.call("emailgateway.deletedomain", APIKey=key))["ErrorCode"] == 1
    assert (await api.call("emailgateway.deletedomain", APIKey=key, DomainID=424242))[
        "ErrorCode"
    ] == 2
    res = await api.call("emailgateway.deletedomain", APIKey=other, DomainID=domain_id)
    assert res["ErrorCode"] == 2
    assert (await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id))["Success"]


# -- emailgateway.cleardomainqueue --------------------------------------------------------------


async def queue_message(writer: QueueWriter, user_id: int, domain_id: int, rcpts: list[str]) -> str:
    message_id = str(uuid.uuid4())
    await writer.submit(
        NewMessage(
            id=message_id,
            user_id=user_id,
            domain_id=domain_id,
            source="smtp",
            mail_from=f"sender@{domain_id}.example.com",
            recipients=rcpts,
            body=b"Subject: hi\r\n\r\nhello\r\n",
        )
    )
    return message_id


async def test_cleardomainqueue(api: Api, services: Services) -> None:
    key = await new_user(api)
    user_id = await user_id_of(services, key)
    mine = await add_domain(api, key)
    other = await add_domain(api, key, "example.org")
    writer = QueueWriter(services.db)
    await writer.start()
    try:
        m1 = await queue_message(writer, user_id, mine, ["a@x.test", "b@x.test", "c@x.test"])
        m2 = await queue_message(writer, user_id, mine, ["d@x.test"])
        m3 = await queue_message(writer, user_id, other, ["e@x.test"])
    finally:
        await writer.stop()
    r = t.recipients
    async with services.db.write() as conn:
        # One delivered and one deferred recipient in the first message.
        await conn.execute(update(r).where(r.c.rcpt == "a@x.test").values(state="delivered"))
        await conn.execute(update(r).where(r.c.rcpt == "b@x.test").values(state="deferred"))

    # 001's example request.
    res = await api.call("emailgateway.cleardomainqueue", APIKey=key, DomainID=mine)
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}

    async with services.db.read() as conn:
        states = dict((await conn.execute(select(r.c.rcpt, r.c.state))).all())
        failed = (
            await conn.execute(
                select(t.events.c.recipient, t.events.c.message_id, t.events.c.domain_id).where(
                    t.events.c.event == events.FAILED
                )
            )
        ).all()
        bodies = dict((await conn.execute(select(t.messages.c.id, t.messages.c.body))).all())
    assert states == {
        "a@x.test": "delivered",
        "b@x.test": "failed",
        "c@x.test": "failed",
        "d@x.test": "failed",
        "e@x.test": "queued",
    }
    assert sorted(failed) == [
        ("b@x.test", m1, mine),
        ("c@x.test", m1, mine),
        ("d@x.test", m2, mine),
    ]
    assert bodies[m1] is None and bodies[m2] is None and bodies[m3] is not None

    # Nothing pending any more: clearing again is a no-op, no new events.
    await api.call("EmailGateway.ClearDomainQueue", APIKey=key, DomainID=mine)
    async with services.db.read() as conn:
        n = len(
            (await conn.execute(select(t.events.c.id).where(t.events.c.event == "failed"))).all()
        )
    assert n == 3


async def test_cleardomainqueue_errors(api: Api) -> None:
    key = await new_user(api)
    other = await new_user(api, "other@example.com")
    domain_id = await add_domain(api, key)
    assert (await api.call("emailgateway.cleardomainqueue", APIKey=key))["ErrorCode"] == 1
    res = await api.call("emailgateway.cleardomainqueue", APIKey=key, DomainID=31337)
    assert res["ErrorCode"] == 2
    res = await api.call("emailgateway.cleardomainqueue", APIKey=other, DomainID=domain_id)
    assert res["ErrorCode"] == 2


# -- emailgateway.adddomain: the per-group limit -------------------------------------------------


async def test_adddomain_group_limit(api: Api, services: Services) -> None:
    key = await new_user(api)
    async with services.db.write() as conn:
        await conn.execute(
            update(t.user_groups).where(t.user_groups.c.id == 1).values(max_sender_domains=2)
        )
    first = await add_domain(api, key, "one.example.com")
    await add_domain(api, key, "two.example.com")
    res = await api.call("emailgateway.adddomain", APIKey=key, DomainName="three.example.com")
    assert res == {
        "Success": False,
        "ErrorCode": [3],
        "ErrorText": "Maximum sender domains limit reached for user",
        "_status": 200,
    }
    # A deleted domain frees its place.
    await api.call("emailgateway.deletedomain", APIKey=key, DomainID=first)
    await add_domain(api, key, "three.example.com")
    # Concurrent adds at the limit: exactly one wins, never both.
    await api.call("emailgateway.deletedomain", APIKey=key, DomainID=await add_or_get(api, key))
    results = await asyncio.gather(
        *(
            api.call("emailgateway.adddomain", APIKey=key, DomainName=f"race{i}.example.com")
            for i in range(3)
        )
    )
    assert sorted(r["Success"] for r in results) == [False, False, True]
    listing = await api.call("emailgateway.getdomains", APIKey=key)
    assert len(listing["Domains"]) == 2


async def add_or_get(api: Api, key: str) -> int:
    listing = await api.call("emailgateway.getdomains", APIKey=key)
    return int(listing["Domains"][0]["DomainID"])
