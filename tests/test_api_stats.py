"""Statistics (001): domainstats, accountstats, recipientdomainstats, listrecipientdomains."""

from __future__ import annotations

import time

import pytest

from relay import events as ev
from relay.services import Services
from tests.apihelpers import accept, make_account, outcome, queue_writer
from tests.conftest import Api
from tests.eventseed import Seeded, seed


@pytest.fixture
async def seeded(api: Api, services: Services) -> Seeded:
    return await seed(api, services)


COUNT_KEYS = {"Sent", "Delivered", "Bounced", "Opened", "Clicked"}
JAN = {"StartDate": "2026-01-01", "EndDate": "2026-01-31"}


async def test_domainstats_documented_example(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call(
        "emailgateway.domainstats", APIKey=acct.api_key, DomainID=acct.domain_id, **JAN
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["Stats"] == {"Sent": 5, "Delivered": 3, "Bounced": 1, "Opened": 0, "Clicked": 0}
    # The previous period of the same length: December 2025.
    assert res["ComparisonStats"] == {
        "PreviousPeriod": {"Sent": 1, "Delivered": 1, "Bounced": 0, "Opened": 0, "Clicked": 0}
    }
    assert res["TagStats"] == {
        "jan": {"Sent": 1, "Delivered": 1},
        "welcome": {"Sent": 1, "Delivered": 1},
    }
    assert (res["StartDate"], res["EndDate"]) == ("2026-01-01 00:00:00", "2026-01-31 23:59:59")
    # 002's spelling; the other domain's numbers are its own.
    res = await api.call(
        "EmailGateway.DomainStats",
        APIKey=acct.api_key,
        DomainID=str(seeded.second.domain_id),
        **JAN,
    )
    assert res["Stats"]["Sent"] == 1 and res["TagStats"] == {}


async def test_domainstats_defaults_and_errors(api: Api, services: Services) -> None:
    acct = await make_account(api)
    now = time.time()
    async with queue_writer(services) as w:
        await accept(w, acct, "recent", ["x@gmail.com"], now - 3 * 86400)
        outcome(w, acct, "recent", "x@gmail.com", ev.DELIVERED, now - 3 * 86400 + 1, 250)
        await accept(w, acct, "too-old", ["y@gmail.com"], now - 40 * 86400)
    res = await api.call("emailgateway.domainstats", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert res["Stats"]["Sent"] == 1 and res["Stats"]["Delivered"] == 1  # default: 28 days
    assert res["ComparisonStats"]["PreviousPeriod"]["Sent"] == 1
    # Invalid dates fall back to the defaults.
    res = await api.call(
        "emailgateway.domainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="01/02/2026",
        EndDate="yesterday",
    )
    assert res["Stats"]["Sent"] == 1
    assert (await api.call("emailgateway.domainstats", APIKey=acct.api_key))["ErrorCode"] == 1
    other = await make_account(api, "other@example.com", "other.example")
    foreign = await api.call(
        "emailgateway.domainstats", APIKey=acct.api_key, DomainID=other.domain_id
    )
    assert foreign["ErrorCode"] == 2


async def test_accountstats_documented_example(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call("emailgateway.accountstats", APIKey=acct.api_key, **JAN)
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert (res["StartDate"], res["EndDate"]) == ("2026-01-01 00:00:00", "2026-01-31 23:59:59")
    assert res["Totals"] == {
        "Sent": 6,
        "Delivered": 4,
        "Bounced": 1,
        "Opened": 0,
        "Clicked": 0,
        "DeliveryRate": 66.67,
        "OpenRate": 0.0,
        "ClickRate": 0.0,
        "BounceRate": 16.67,
    }
    assert res["ComparisonTotals"]["Sent"] == 1 and res["ComparisonTotals"]["DeliveryRate"] == 100.0
    per = res["PerDomain"]
    # Ordered by Sent descending; the domain without events is zero-filled.
    assert [(d["DomainID"], d["SenderDomain"], d["Sent"]) for d in per] == [
        (acct.domain_id, "example.com", 5),
        (seeded.second.domain_id, "second.example", 1),
        (seeded.empty_domain_id, "empty.example", 0),
    ]
    assert list(per[0]) == [
        "DomainID",
        "SenderDomain",
        "Sent",
        "Delivered",
        "Bounced",
        "Opened",
        "Clicked",
        "DeliveryRate",
        "BounceRate",
        "OpenRate",
        "ClickRate",
    ]
    assert per[0]["DeliveryRate"] == 60.0 and per[0]["BounceRate"] == 20.0
    assert per[2]["DeliveryRate"] == 0.0
    # DomainIDs: a comma list; IDs not owned are silently ignored.
    res = await api.call(
        "emailgateway.accountstats",
        APIKey=acct.api_key,
        DomainIDs=f"{seeded.second.domain_id},{seeded.other.domain_id},999,x",
        **JAN,
    )
    assert [d["DomainID"] for d in res["PerDomain"]] == [seeded.second.domain_id]
    assert res["Totals"]["Sent"] == 1
    # EndDate is clamped to StartDate.
    res = await api.call(
        "emailgateway.accountstats",
        APIKey=acct.api_key,
        StartDate="2026-01-10",
        EndDate="2025-01-01",
    )
    assert res["EndDate"] == "2026-01-10 23:59:59" and res["Totals"]["Sent"] == 6
    denied = await api.call("emailgateway.accountstats", APIKey="expired", **JAN)
    assert denied["ErrorCode"] == 99998


async def test_recipientdomainstats(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call(
        "emailgateway.recipientdomainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        RecipientToDomain="gmail.com",
        **JAN,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    # Delivered to gmail.com: a (session 0.5 s), c (400 s after acceptance), d (1 s).
    assert res["SummaryStats"] == [
        {
            "Status": "Sent",
            "TotalEmails": 3,
            "AvgDeliverySeconds": 113.83,
            "MinDeliverySeconds": 0,
            "MaxDeliverySeconds": 340,
        }
    ]
    assert res["DeliverySpeedHistogram"] == {
        "Sent": [
            {"DeliveryBucket": "< 1s", "EmailCount": 1, "Percentage": 33.33},
            {"DeliveryBucket": "1-5s", "EmailCount": 1, "Percentage": 33.33},
            {"DeliveryBucket": "5-10m", "EmailCount": 1, "Percentage": 33.33},
        ]
    }
    res = await api.call(
        "emailgateway.recipientdomainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        RecipientToDomain="yahoo.com",
        **JAN,
    )
    assert res["SummaryStats"] == [
        {
            "Status": "Failed",
            "TotalEmails": 1,
            "AvgDeliverySeconds": 5.0,
            "MinDeliverySeconds": 5,
            "MaxDeliverySeconds": 5,
        }
    ]
    assert res["DeliverySpeedHistogram"]["Failed"] == [
        {"DeliveryBucket": "5-10s", "EmailCount": 1, "Percentage": 100.0}
    ]
    # Refused at RCPT: counted, but there is no delivery time.
    res = await api.call(
        "emailgateway.recipientdomainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        RecipientToDomain="outlook.com",
        **JAN,
    )
    assert res["SummaryStats"][0]["TotalEmails"] == 1
    assert res["SummaryStats"][0]["AvgDeliverySeconds"] is None
    assert res["DeliverySpeedHistogram"] == {}
    base = {"APIKey": acct.api_key}
    assert (
        await api.call("emailgateway.recipientdomainstats", **base, RecipientToDomain="gmail.com")
    )["ErrorCode"] == 1
    assert (await api.call("emailgateway.recipientdomainstats", **base, DomainID=acct.domain_id))[
        "ErrorCode"
    ] == 1
    assert (
        await api.call(
            "emailgateway.recipientdomainstats",
            **base,
            DomainID=seeded.other.domain_id,
            RecipientToDomain="gmail.com",
        )
    )["ErrorCode"] == 2


async def test_listrecipientdomains(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call(
        "emailgateway.listrecipientdomains",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
        Limit=20,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert (res["StartDate"], res["EndDate"], res["Limit"]) == (
        "2026-01-01 00:00:00",
        "2026-01-31 23:59:59",
        20,
    )
    assert res["RecipientDomains"] == [
        {
            "Domain": "gmail.com",
            "Sent": 3,
            "Failed": 0,
            "Sending": 1,  # g@gmail.com: accepted, nothing final yet
            "AvgDeliverySec": 113.83,
            "MinDeliverySec": 0.5,
            "MaxDeliverySec": 340.0,
        },
        {
            "Domain": "outlook.com",
            "Sent": 0,
            "Failed": 1,
            "Sending": 0,
            "AvgDeliverySec": None,
            "MinDeliverySec": None,
            "MaxDeliverySec": None,
        },
        {
            "Domain": "yahoo.com",
            "Sent": 0,
            "Failed": 1,
            "Sending": 0,
            "AvgDeliverySec": None,
            "MinDeliverySec": None,
            "MaxDeliverySec": None,
        },
    ]
    # GET, as the document's example; Limit clamped to at least 1.
    async with api.session.get(
        f"{api.base}/api.php",
        params={
            "Command": "emailgateway.listrecipientdomains",
            "APIKey": acct.api_key,
            "DomainID": str(acct.domain_id),
            "StartDate": "2026-01-01",
            "EndDate": "2026-01-31",
            "Limit": "0",
        },
    ) as resp:
        body = await resp.json(content_type=None)
    assert body["Limit"] == 1 and [d["Domain"] for d in body["RecipientDomains"]] == ["gmail.com"]
    res = await api.call(
        "emailgateway.listrecipientdomains",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Limit=5000,
    )
    assert res["Limit"] == 1000 and res["RecipientDomains"] == []  # default: the last 30 days
    assert (await api.call("emailgateway.listrecipientdomains", APIKey=acct.api_key))[
        "ErrorCode"
    ] == 1
    foreign = await api.call(
        "emailgateway.listrecipientdomains", APIKey=acct.api_key, DomainID=seeded.other.domain_id
    )
    assert foreign["ErrorCode"] == 2
    assert foreign["ErrorText"] == "Domain not found or not owned by the caller"
