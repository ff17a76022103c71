"""Who owns a domain name (docs/dns.md): several accounts may add it, one at a time has it
Enabled, verification against DNS decides; and internationalized names, stored as A-labels.
Over real HTTP, verification against the DNS stub, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert, select, text

from relay import config
from relay.services import Services
from relay.store import migrate
from relay.store import schema as t
from relay.store.db import Database, utcnow
from tests.conftest import ADMIN_KEY, Api
from tests.dnsstub import DnsStub


@pytest.fixture
def settings(settings: config.Settings, dns_stub: DnsStub) -> config.Settings:
    settings.dns.nameservers = [dns_stub.nameserver]
    settings.dns.timeout = 1.0
    settings.dns.cache_ttl = 0  # every verification looks at what the stub serves now
    return settings


async def new_user(api: Api, email: str) -> str:
    res = await api.call("user.create", admin=True, EmailAddress=email)
    assert res["Success"] is True, res
    return str(res["APIKey"])


async def add(api: Api, key: str, name: str, **extra: Any) -> dict[str, Any]:
    res = await api.call("emailgateway.adddomain", APIKey=key, DomainName=name, **extra)
    assert res["Success"] is True, res
    return res


async def status_of(api: Api, key: str, domain_id: int) -> str:
    res = await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id)
    return str(res["Domain"]["Status"])


async def relay_allowed(api: Api, domain: str) -> bool:
    status, _ = await api.request(
        "GET",
        "/api/v1/inbound-relay-domain-check",
        params={"domain": domain},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    return status == 200


async def test_a_name_is_enabled_for_one_account_and_dns_decides(
    api: Api, dns_stub: DnsStub
) -> None:
    alice, mallory = await new_user(api, "alice@example.org"), await new_user(api, "m@example.org")
    a = await add(api, alice, "shared.example")
    # Adding a name another account has is allowed: adding proves nothing, and refusing it
    # would let whoever adds first lock the owner out. Each gets its own DKIM key.
    m = await add(api, mallory, "shared.example")
    a_id, m_id = a["NewSenderDomainID"], m["NewSenderDomainID"]
    assert a["DNSRecords"] != m["DNSRecords"]

    # Alice publishes her records and verifies: Enabled.
    dns_stub.publish(a["DNSRecords"])
    res = await api.call("emailgateway.verifydomain", APIKey=alice, DomainID=a_id)
    assert res["Domain"]["Status"] == "Enabled"

    # Mallory's verification fails like any other (her DKIM key is not published).
    res = await api.call("emailgateway.verifydomain", APIKey=mallory, DomainID=m_id)
    assert res["Success"] is True and res["Domain"]["Status"] == "Approval Pending"

    # The admin cannot enable a second one either.
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=m_id, Status="Enabled"
    )
    assert res == {
        "Success": False,
        "ErrorCode": 4,
        "ErrorText": "The domain name is Enabled for another account",
        "_status": 200,
    }
    assert await status_of(api, mallory, m_id) == "Approval Pending"

    # Both record sets published (two DKIM keys can coexist): the Enabled one keeps the name.
    dns_stub.publish(m["DNSRecords"])
    res = await api.call("emailgateway.verifydomain", APIKey=mallory, DomainID=m_id)
    assert res["Success"] is False and res["ErrorCode"] == 3, res
    assert await status_of(api, mallory, m_id) == "Approval Pending"
    assert await status_of(api, alice, a_id) == "Enabled"
    # Its per-record flags were stored all the same.
    got = await api.call("emailgateway.getdomain", APIKey=mallory, DomainID=m_id)
    dkim = next(h for h in got["DNSRecords"] if "._domainkey." in h)
    assert got["DNSRecords"][dkim][2] is True

    # The domain's DNS now publishes only Mallory's records (its owner changed them): her
    # verification takes the name over, Alice's domain goes back to Approval Pending.
    dns_stub.clear()
    dns_stub.publish(m["DNSRecords"])
    res = await api.call("emailgateway.verifydomain", APIKey=mallory, DomainID=m_id)
    assert res["Success"] is True and res["Domain"]["Status"] == "Enabled", res
    assert await status_of(api, alice, a_id) == "Approval Pending"
    got = await api.call("emailgateway.getdomain", APIKey=alice, DomainID=a_id)
    dkim = next(h for h in got["DNSRecords"] if "._domainkey." in h)
    assert got["DNSRecords"][dkim][2] is False
    assert await relay_allowed(api, "shared.example")

    # Alice cannot get it back without the DNS: an admin can, once Mallory's is not Enabled.
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=a_id, Status="Enabled"
    )
    assert res["ErrorCode"] == 4
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=m_id, Status="Disabled"
    )
    assert res["Success"] is True
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=a_id, Status="Enabled"
    )
    assert res["Success"] is True and res["Domain"]["Status"] == "Enabled"

    # Deleting the Enabled one frees the name for the other account's verification.
    assert (await api.call("emailgateway.deletedomain", APIKey=alice, DomainID=a_id))["Success"]
    res = await api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=m_id, Status="Approval Pending"
    )
    res = await api.call("emailgateway.verifydomain", APIKey=mallory, DomainID=m_id)
    assert res["Domain"]["Status"] == "Enabled"


async def test_a_resolver_failure_never_takes_a_name_away(api: Api, dns_stub: DnsStub) -> None:
    alice, bob = await new_user(api, "alice@example.org"), await new_user(api, "bob@example.org")
    # Alice's return-path host differs from Bob's, so the stub can fail hers alone.
    a = await add(api, alice, "flaky.example", Subdomain="bounces")
    b = await add(api, bob, "flaky.example")
    dns_stub.publish(a["DNSRecords"])
    res = await api.call("emailgateway.verifydomain", APIKey=alice, DomainID=a["NewSenderDomainID"])
    assert res["Domain"]["Status"] == "Enabled"
    dns_stub.publish(b["DNSRecords"])
    dns_stub.servfail("bounces.flaky.example")
    res = await api.call("emailgateway.verifydomain", APIKey=bob, DomainID=b["NewSenderDomainID"])
    assert res["ErrorCode"] == 3, res
    assert await status_of(api, alice, a["NewSenderDomainID"]) == "Enabled"
    # A definitive answer (the record is gone) does.
    dns_stub.remove("bounces.flaky.example")
    res = await api.call("emailgateway.verifydomain", APIKey=bob, DomainID=b["NewSenderDomainID"])
    assert res["Domain"]["Status"] == "Enabled", res
    assert await status_of(api, alice, a["NewSenderDomainID"]) == "Approval Pending"


async def test_concurrent_enables_one_wins(api: Api) -> None:
    ids = []
    for n in range(4):
        key = await new_user(api, f"user{n}@example.org")
        ids.append((await add(api, key, "race.example"))["NewSenderDomainID"])
    answers = await asyncio.gather(
        *(
            api.call("emailgateway.setdomainstatus", admin=True, DomainID=i, Status="Enabled")
            for i in ids
        )
    )
    assert sorted(a["ErrorCode"] for a in answers) == [0, 4, 4, 4], answers


async def test_migration_keeps_the_first_enabled(db_url: str) -> None:
    """An installation with a name Enabled for several accounts upgrades: the account that
    added it first keeps it, the others go back to Approval Pending."""
    db = Database(db_url)
    try:
        # PostgreSQL's test database comes migrated (from a template): back to 0002 first.
        step = command.downgrade if await migrate.current_revision(db) else command.upgrade
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda sync: step(migrate._config(sync), "0002"))
        ts = utcnow()
        async with db.write() as conn:
            if not await conn.scalar(select(t.user_groups.c.id).where(t.user_groups.c.id == 1)):
                await conn.execute(
                    insert(t.user_groups).values(id=1, name="g", created_at=ts, updated_at=ts)
                )
            for n in (1, 2, 3):
                await conn.execute(
                    insert(t.users).values(
                        id=n,
                        email=f"u{n}@x.example",
                        group_id=1,
                        api_key_hash=f"h{n}",
                        created_at=ts,
                        updated_at=ts,
                    )
                )
            for n, (user, name, status) in enumerate(
                [(2, "dup.example", "Enabled"), (1, "dup.example", "Enabled"),
                 (3, "dup.example", "Approval Pending"), (3, "solo.example", "Enabled")],
                start=1,
            ):  # fmt: skip
                await conn.execute(
                    text(
                        "INSERT INTO gateway_domains (id, user_id, name, status, options, "
                        "dkim_selector, dkim_private_key, dkim_public_key, verification_meta, "
                        "policy_meta, created_at, updated_at) VALUES (:id, :user, :name, :status, "
                        "'{}', 's', 'k', 'p', '{}', '[]', :ts, :ts)"
                    ),
                    {"id": n, "user": user, "name": name, "status": status, "ts": ts},
                )
        await migrate.upgrade(db)
        d = t.gateway_domains
        async with db.read() as conn:
            rows = (await conn.execute(select(d.c.id, d.c.status).order_by(d.c.id))).all()
        assert [tuple(r) for r in rows] == [
            (1, "Enabled"),
            (2, "Approval Pending"),
            (3, "Approval Pending"),
            (4, "Enabled"),
        ]
    finally:
        await db.close()


# -- internationalized domain names -------------------------------------------------------------


async def test_idn_domains_are_stored_as_a_labels(
    api: Api, dns_stub: DnsStub, services: Services
) -> None:
    key = await new_user(api, "owner@example.org")
    res = await api.call("emailgateway.adddomain", APIKey=key, DomainName="Bücher.Example")
    assert res["Success"] is True, res
    assert res["Domain"]["SenderDomain"] == "xn--bcher-kva.example"
    assert all(h.endswith("xn--bcher-kva.example") for h in res["DNSRecords"])
    # The same name in either form is the same domain of the account.
    again = await api.call("emailgateway.adddomain", APIKey=key, DomainName="xn--bcher-kva.example")
    assert again["ErrorCode"] == [5]
    # IDNA 2008, not Python's IDNA 2003 codec: "ß" stays itself (2003 would map it to "ss").
    sharp = await api.call("emailgateway.adddomain", APIKey=key, DomainName="straße.example")
    assert sharp["Domain"]["SenderDomain"] == "xn--strae-oqa.example"
    # Not a name in any form: the documented code.
    for bad in ("bü cher.example", "xn--.example", "-ü.example", "ü" * 64 + ".example"):
        res = await api.call("emailgateway.adddomain", APIKey=key, DomainName=bad)
        assert res["ErrorCode"] == [2], (bad, res)

    domain_id = res_id = (await api.call("emailgateway.getdomains", APIKey=key))["Domains"][0][
        "DomainID"
    ]
    assert res_id
    dns_stub.publish(
        (await api.call("emailgateway.getdomain", APIKey=key, DomainID=domain_id))["DNSRecords"]
    )
    res = await api.call("emailgateway.verifydomain", APIKey=key, DomainID=domain_id)
    assert res["Domain"] == {
        "DomainID": int(domain_id),
        "SenderDomain": "xn--bcher-kva.example",
        "Status": "Enabled",
    }
    # The MX check answers for either form.
    assert await relay_allowed(api, "xn--bcher-kva.example")
    assert await relay_allowed(api, "Jörg@BÜCHER.example")

    # User sender domains (seed 003) too.
    status, body = await api.request(
        "POST", "/api/v1/user.senderdomain", json={"APIKey": key, "SenderDomain": "Bücher.Example"}
    )
    assert status == 200 and body["SenderDomain"]["SenderDomain"] == "xn--bcher-kva.example"
    status, body = await api.request(
        "POST", "/api/v1/user.senderdomain", json={"APIKey": key, "SenderDomain": "bü cher.example"}
    )
    assert status == 400 and body["Errors"][0]["Code"] == 7

    # A suppressed address in U-labels is stored in the form recipients are compared in.
    res = await api.call("emailgateway.addsuppression", APIKey=key, EmailAddress="X@Bücher.example")
    assert res["Success"] is True
    listed = await api.call("emailgateway.getsuppressions", APIKey=key)
    assert [s["EmailAddress"] for s in listed["Suppressions"]] == ["x@xn--bcher-kva.example"]
