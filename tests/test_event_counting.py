"""Every events and statistics command over a known event history with every kind of event,
counted the way the documents mean it (once per recipient where they ask for unique counts,
machines not counted as opens or clicks), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from relay.services import Services
from relay.store import eventlog
from tests.conftest import Api
from tests.eventseed import E0, MARCH, Engaged, seed_engagement


@pytest.fixture
async def engaged(api: Api, services: Services) -> Engaged:
    found = await seed_engagement(api, services)
    # PostgreSQL's rollups as the maintenance task leaves them; the answers are the same
    # before (test_event_rollups.py checks that).
    await eventlog.fold_rollups(services.db)
    return found


STATS = {
    "Sent": 7,  # accepted: e1..e5 and both recipients of e6
    "Delivered": 5,  # a, b, c (delivered + accepted-by-mta: once), e, f
    "Bounced": 1,  # d, bounced twice
    "Opened": 3,  # a, c, f (b was only opened by a machine)
    "Clicked": 1,  # a
}
RATES = {"DeliveryRate": 71.43, "OpenRate": 42.86, "ClickRate": 14.29, "BounceRate": 14.29}
ZERO = dict.fromkeys(STATS, 0)


async def call(api: Api, command: str, acct: Any, **params: Any) -> dict[str, Any]:
    res = await api.call(command, APIKey=acct.api_key, **params)
    assert res["Success"] is True, res
    return res


async def test_domainstats(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    res = await call(api, "emailgateway.domainstats", acct, DomainID=acct.domain_id, **MARCH)
    assert res["Stats"] == STATS
    assert res["ComparisonStats"] == {"PreviousPeriod": ZERO}
    assert res["TagStats"] == {
        "jan": {"Sent": 2, "Delivered": 1},  # e6: f delivered, g given up
        "welcome": {"Sent": 3, "Delivered": 2},  # e1 (a) and e6
    }


async def test_accountstats(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    res = await call(api, "emailgateway.accountstats", acct, **MARCH)
    assert res["Totals"] == STATS | RATES
    assert res["ComparisonTotals"] == ZERO | dict.fromkeys(RATES, 0.0)
    assert res["PerDomain"] == [
        {
            "DomainID": acct.domain_id,
            "SenderDomain": "apex.example",
            **STATS,
            "DeliveryRate": 71.43,
            "BounceRate": 14.29,
            "OpenRate": 42.86,
            "ClickRate": 14.29,
        },
        {
            "DomainID": engaged.quiet_domain_id,
            "SenderDomain": "quiet.example",
            **ZERO,
            "DeliveryRate": 0.0,
            "BounceRate": 0.0,
            "OpenRate": 0.0,
            "ClickRate": 0.0,
        },
    ]


async def test_aggrevents_counts_every_event(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    res = await call(
        api, "emailgateway.aggrevents", acct, DomainID=acct.domain_id, AggregateSize=20, **MARCH
    )
    assert res["AggBuckets"] == [
        {"key": "accepted", "doc_count": 7},
        {"key": "open", "doc_count": 6},  # every open, machines' too
        {"key": "delivery", "doc_count": 5},
        {"key": "click", "doc_count": 4},
        {"key": "bounce", "doc_count": 2},
        {"key": "accepted-by-mta", "doc_count": 1},  # PowerMTA accounting's
        {"key": "complaint", "doc_count": 1},
        {"key": "deferred", "doc_count": 1},
        {"key": "failed", "doc_count": 1},
        {"key": "rejected", "doc_count": 1},
        {"key": "unsubscribe", "doc_count": 1},
    ]
    res = await call(
        api,
        "emailgateway.aggrevents",
        acct,
        DomainID=acct.domain_id,
        AggregatedField="recipient-domain",
        **MARCH,
    )
    assert res["AggBuckets"] == [
        {"key": "gmail.com", "doc_count": 18},
        {"key": "yahoo.com", "doc_count": 7},
        {"key": "outlook.com", "doc_count": 5},
    ]
    res = await call(
        api,
        "emailgateway.aggrevents",
        acct,
        DomainID=acct.domain_id,
        AggregatedField="smtp-code",
        **MARCH,
    )
    assert res["AggBuckets"] == [
        {"key": 250, "doc_count": 13},  # 7 accepted, 5 delivered, 1 accepted-by-mta
        {"key": 550, "doc_count": 3},
        {"key": 421, "doc_count": 2},
    ]
    res = await call(
        api,
        "emailgateway.aggrevents",
        acct,
        DomainID=acct.domain_id,
        AggregatedField="recipient",
        AggregateSize=2,
        **MARCH,
    )
    assert res["AggBuckets"] == [
        {"key": "a@gmail.com", "doc_count": 8},
        {"key": "b@gmail.com", "doc_count": 4},
    ]


async def test_recipientdomainstats(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct

    async def stats(rdomain: str) -> dict[str, Any]:
        return await call(
            api,
            "emailgateway.recipientdomainstats",
            acct,
            DomainID=acct.domain_id,
            RecipientToDomain=rdomain,
            **MARCH,
        )

    res = await stats("gmail.com")
    assert res["SummaryStats"] == [
        {
            "Status": "Sent",
            "TotalEmails": 3,  # a 1.5 s, b 0.2 s, f 7 s
            "AvgDeliverySeconds": 2.9,
            "MinDeliverySeconds": 0,
            "MaxDeliverySeconds": 7,
        },
        {
            "Status": "Failed",
            "TotalEmails": 1,  # g, given up
            "AvgDeliverySeconds": 40.0,
            "MinDeliverySeconds": 40,
            "MaxDeliverySeconds": 40,
        },
    ]
    assert res["DeliverySpeedHistogram"] == {
        "Sent": [
            {"DeliveryBucket": "< 1s", "EmailCount": 1, "Percentage": 33.33},
            {"DeliveryBucket": "1-5s", "EmailCount": 1, "Percentage": 33.33},
            {"DeliveryBucket": "5-10s", "EmailCount": 1, "Percentage": 33.33},
        ],
        "Failed": [{"DeliveryBucket": "30-60s", "EmailCount": 1, "Percentage": 100.0}],
    }
    res = await stats("yahoo.com")
    # c: delivered once though PowerMTA reported it too; d: bounced once though reported twice.
    assert [
        (s["Status"], s["TotalEmails"], s["AvgDeliverySeconds"]) for s in res["SummaryStats"]
    ] == [
        ("Sent", 1, 2.0),
        ("Failed", 1, 3.0),
    ]
    res = await stats("outlook.com")
    # h was refused at RCPT: a failure without a delivery time.
    assert [
        (s["Status"], s["TotalEmails"], s["AvgDeliverySeconds"]) for s in res["SummaryStats"]
    ] == [
        ("Sent", 1, 1.0),
        ("Failed", 1, None),
    ]
    assert list(res["DeliverySpeedHistogram"]) == ["Sent"]


async def test_listrecipientdomains(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    res = await call(
        api, "emailgateway.listrecipientdomains", acct, DomainID=acct.domain_id, **MARCH
    )
    assert res["RecipientDomains"] == [
        {
            "Domain": "gmail.com",
            "Sent": 3,
            "Failed": 1,
            "Sending": 0,
            "AvgDeliverySec": 2.9,
            "MinDeliverySec": 0.2,
            "MaxDeliverySec": 7.0,
        },
        {
            "Domain": "outlook.com",
            "Sent": 1,
            "Failed": 1,
            "Sending": 0,
            "AvgDeliverySec": 1.0,
            "MinDeliverySec": 1.0,
            "MaxDeliverySec": 1.0,
        },
        {
            "Domain": "yahoo.com",
            "Sent": 1,
            "Failed": 1,
            "Sending": 0,
            "AvgDeliverySec": 2.0,
            "MinDeliverySec": 2.0,
            "MaxDeliverySec": 2.0,
        },
    ]


async def test_getevents_filters_and_attempts(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    base = {"DomainID": acct.domain_id, "StartFrom": 0, "RetrieveCount": 100}

    async def total(**params: Any) -> int:
        res = await call(api, "emailgateway.getevents", acct, **base, **params)
        return int(res["TotalRecords"])

    assert await total() == 30
    for name, n in (("open", 6), ("clicked", 4), ("unsubscribe", 1), ("complaint", 1)):
        assert await total(Event=name) == n, name
    assert await total(Query="a@gmail") == 8
    res = await call(api, "emailgateway.getevents", acct, **base, Event="deferred")
    assert res["Events"][0]["delivery-status"] == {
        "code": 421,
        "message": "421 busy",
        "attempt": 1,
        "next-attempt-at": int(E0 + 170),
    }
    status, body = await api.request(
        "GET",
        "/api/v1/events",
        headers={"Authorization": f"Bearer {await _sender_key(api, acct)}"},
        params={"Event": "failed"},
    )
    assert status == 200
    assert body["Events"][0]["DeliveryStatus"] == {
        "Code": 421,
        "Message": "421 busy",
        "Attempt": 2,
        "NextAttemptAt": None,
    }


async def _sender_key(api: Api, acct: Any) -> str:
    res = await call(api, "emailgateway.addapi", acct, DomainID=acct.domain_id, Description="k")
    return str(res["APIKey"]["APIKey"])


async def test_exportevents_attempt_columns(api: Api, engaged: Engaged) -> None:
    acct = engaged.acct
    query = {
        "Command": "emailgateway.exportevents",
        "APIKey": acct.api_key,
        "DomainID": str(acct.domain_id),
        **MARCH,
    }
    async with api.session.get(f"{api.base}/api.php", params=query) as resp:
        assert resp.headers["X-Octeth-Export-Total"] == "30"
        body = await resp.read()
    rows = list(csv.DictReader(io.StringIO(body[3:].decode("utf-8"))))
    assert len(rows) == 30
    deferred = next(r for r in rows if r["Event"] == "deferred")
    assert (deferred["SMTPResponse"], deferred["Attempt"], deferred["NextAttemptAt"]) == (
        "421 busy",
        "1",
        "2026-03-02T09:02:50Z",
    )
    failed = next(r for r in rows if r["Event"] == "failed")
    assert (failed["Attempt"], failed["NextAttemptAt"]) == ("2", "")


async def test_query_pages_and_export(api: Api, engaged: Engaged) -> None:
    """A text search (trigram indexes on PostgreSQL, a scan on SQLite): the same matches,
    pages and export either way."""
    acct = engaged.acct
    base = {"DomainID": acct.domain_id, "StartFrom": 0, "RetrieveCount": 100}
    every = await call(api, "emailgateway.getevents", acct, **base)
    full = await call(api, "emailgateway.getevents", acct, **base, Query="GMAIL.com")
    expected = [e["id"] for e in every["Events"] if "gmail.com" in (e["recipient"] or "").lower()]
    assert full["TotalRecords"] == len(expected) == 18
    assert [e["id"] for e in full["Events"]] == expected
    page = await call(
        api,
        "emailgateway.getevents",
        acct,
        **{**base, "StartFrom": 2, "RetrieveCount": 3},
        Query="gmail.com",
    )
    assert page["TotalRecords"] == 18 and [e["id"] for e in page["Events"]] == expected[2:5]
    # Message fields: the subject, the Message-ID header, the client address.
    for text, n in (("Test Email", 30 - 1), ("<e6@relay.test>", 6), ("127.0.0.1", 29)):
        res = await call(api, "emailgateway.getevents", acct, **base, Query=text)
        assert res["TotalRecords"] == n, text
    query = {
        "Command": "emailgateway.exportevents",
        "APIKey": acct.api_key,
        "DomainID": str(acct.domain_id),
        "Query": "5.1.1",
        **MARCH,
    }
    async with api.session.get(f"{api.base}/api.php", params=query) as resp:
        assert resp.headers["X-Octeth-Export-Total"] == "2"
        rows = list(csv.DictReader(io.StringIO((await resp.read())[3:].decode("utf-8"))))
    assert [r["SMTPResponse"] for r in rows] == ["550 5.1.1 dsn", "550 5.1.1 no"]
