"""The event log: emailgateway.getevents, GET /api/v1/events, aggrevents, exportevents (001)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from relay import events as ev
from relay.services import Services
from tests.apihelpers import bearer, outcome, queue_writer, sender_key
from tests.conftest import ADMIN_KEY, Api
from tests.eventseed import T0, Seeded, seed


@pytest.fixture
async def seeded(api: Api, services: Services) -> Seeded:
    return await seed(api, services)


async def test_getevents_documented_examples(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call(
        "emailgateway.getevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartFrom=0,
        RetrieveCount=50,
        Event="delivery",
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["TotalRecords"] == 4  # three in January, one in December
    first = res["Events"][0]
    assert first["event"] == "delivery" and isinstance(first["timestamp"], int)
    assert first["timestamp"] == int(T0 + 400)  # newest first
    headers = first["message"]["headers"]
    assert headers == {
        "from": "sender@example.com",
        "to": "c@gmail.com",
        "subject": "Second",
        "message-id": "<m2@relay.test>",
    }
    assert first["delivery-status"] == {
        "code": 250,
        "message": "250 ok",
        "attempt": None,
        "next-attempt-at": None,
    }
    # Without DomainID: every domain of the caller, never another user's.
    res = await api.call(
        "emailgateway.getevents",
        APIKey=acct.api_key,
        StartFrom=0,
        RetrieveCount=50,
        Event="delivery",
    )
    assert res["TotalRecords"] == 5
    assert {e["domain-id"] for e in res["Events"]} == {acct.domain_id, seeded.second.domain_id}
    everything = await api.call(
        "emailgateway.getevents", APIKey=acct.api_key, StartFrom=0, RetrieveCount=100
    )
    assert everything["TotalRecords"] == 15
    assert all(e["message"]["headers"]["subject"] != "Not yours" for e in everything["Events"])


async def test_getevents_002_spelling_and_filters(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    base = {"APIKey": acct.api_key, "DomainID": acct.domain_id, "StartFrom": 0}

    async def total(**params: Any) -> int:
        res = await api.call("EmailGateway.GetEvents", **base, RetrieveCount=100, **params)
        assert res["Success"] is True, res
        return int(res["TotalRecords"])

    assert await total(StartDate="2026-01-01", EndDate="2026-01-31") == 11
    assert await total(StartDate="2026-01-11") == 0
    assert await total(EndDate="2025-12-31") == 2
    for name in ("delivered", "delivery", "accepted-by-mta", "DELIVERED"):
        assert await total(Event=name, StartDate="2026-01-01") == 3, name
    for name in ("accepted", "accepted-by-oempro"):
        assert await total(Event=name, StartDate="2026-01-01") == 5
    for name in ("bounced", "bounce", "rejected-by-mta"):
        assert await total(Event=name) == 1
    for name in ("rejected", "rejected-by-oempro"):
        assert await total(Event=name) == 1
    assert await total(Event="open") == 0
    assert await total(Event="no-such-event") == 0
    assert await total(Query="welcome to") == 4  # m1: accepted x2, delivered, bounced
    assert await total(Query="outlook") == 1
    assert await total(Query="5.1.1") == 1
    assert await total(Query="%") == 0
    page = await api.call("emailgateway.getevents", **{**base, "StartFrom": 2}, RetrieveCount=4)
    assert page["TotalRecords"] == 13 and len(page["Events"]) == 4
    full = await api.call("emailgateway.getevents", **base, RetrieveCount=100)
    assert [e["id"] for e in page["Events"]] == [e["id"] for e in full["Events"][2:6]]


async def test_getevents_caps_at_100(api: Api, services: Services, seeded: Seeded) -> None:
    acct = seeded.acct
    async with queue_writer(services) as w:
        for i in range(120):
            outcome(w, acct, None, f"r{i}@example.net", ev.REJECTED, T0 + 1000 + i, 550)
    res = await api.call(
        "emailgateway.getevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartFrom=0,
        RetrieveCount=500,
    )
    assert res["TotalRecords"] == 133 and len(res["Events"]) == 100


async def test_getevents_errors(api: Api, seeded: Seeded) -> None:
    acct, other = seeded.acct, seeded.other
    key = acct.api_key
    foreign = await api.call(
        "emailgateway.getevents",
        APIKey=key,
        DomainID=other.domain_id,
        StartFrom=0,
        RetrieveCount=5,
    )
    assert foreign == {
        "Success": False,
        "ErrorCode": 2,
        "ErrorText": "Domain not found or access denied",
        "_status": 200,
    }
    assert (await api.call("emailgateway.getevents", APIKey=key, RetrieveCount=5))["ErrorCode"] == 4
    assert (await api.call("emailgateway.getevents", APIKey=key, StartFrom=0))["ErrorCode"] == 5
    assert (await api.call("emailgateway.getevents", APIKey=key, StartFrom="x", RetrieveCount=5))[
        "ErrorCode"
    ] == 4
    assert (await api.call("emailgateway.getevents", APIKey=key, StartFrom=0, RetrieveCount=0))[
        "ErrorCode"
    ] == 5


# -- GET /api/v1/events ------------------------------------------------------------------------


async def test_public_events_documented_example(api: Api, seeded: Seeded) -> None:
    key = await sender_key(api, seeded.acct)
    # The document sends a JSON body with the GET.
    status, body = await api.request(
        "GET",
        "/api/v1/events",
        headers=bearer(key),
        data='{"StartFrom": 0, "RetrieveCount": 50, "Event": "delivery"}',
    )
    assert status == 200 and set(body) == {"TotalRecords", "Events"}
    assert body["TotalRecords"] == 4
    event = body["Events"][0]
    assert event["Event"] == "delivery" and event["LoggedAt"] == int(T0 + 400)
    assert event["Message"]["Headers"] == {
        "From": "sender@example.com",
        "To": "c@gmail.com",
        "Subject": "Second",
        "MessageID": "<m2@relay.test>",
    }
    assert event["MessageID"] == "m2" and event["DeliveryStatus"]["Code"] == 250
    # Defaults: StartFrom 0, RetrieveCount 5; only the key's domain.
    status, body = await api.request("GET", "/api/v1/events", headers=bearer(key))
    assert status == 200 and body["TotalRecords"] == 13 and len(body["Events"]) == 5
    # 002's example: query parameters, Unix timestamps, MessageID.
    status, body = await api.request(
        "GET",
        "/api/v1/events",
        headers=bearer(key),
        params={"StartDate": str(int(T0)), "EndDate": str(int(T0 + 5)), "RetrieveCount": "10"},
    )
    assert status == 200
    assert sorted(e["LoggedAt"] - int(T0) for e in body["Events"]) == [0, 0, 2, 5]
    status, body = await api.request(
        "GET", "/api/v1/events", headers=bearer(key), params={"MessageID": "m1"}
    )
    assert body["TotalRecords"] == 4
    status, body = await api.request(
        "GET", "/api/v1/events", headers=bearer(key), params={"MessageID": "<m1@relay.test>"}
    )
    assert body["TotalRecords"] == 4
    status, body = await api.request(
        "GET",
        "/api/v1/events",
        headers=bearer(key),
        params={"StartDate": "2026-01-10 12:00:00", "EndDate": "2026-01-10 12:00:02"},
    )
    assert body["TotalRecords"] == 3
    second_key = await sender_key(api, seeded.second)
    status, body = await api.request("GET", "/api/v1/events", headers=bearer(second_key))
    assert body["TotalRecords"] == 2


async def test_public_events_errors(api: Api, seeded: Seeded) -> None:
    key = await sender_key(api, seeded.acct)
    status, body = await api.request("GET", "/api/v1/events")
    assert (status, body) == (401, {"Errors": [{"Code": 1, "Message": "Missing SenderAPIKey"}]})
    status, body = await api.request("GET", "/api/v1/events", headers=bearer("wrong"))
    assert (status, body) == (401, {"Errors": [{"Code": 13, "Message": "Invalid SenderAPIKey"}]})
    status, body = await api.request(
        "GET", "/api/v1/events", headers=bearer(key), params={"StartFrom": "-3"}
    )
    assert (status, body) == (400, {"Errors": [{"Code": 4, "Message": "Missing StartFrom"}]})
    status, body = await api.request(
        "GET", "/api/v1/events", headers=bearer(key), params={"RetrieveCount": "none"}
    )
    assert (status, body) == (400, {"Errors": [{"Code": 5, "Message": "Missing RetrieveCount"}]})
    await api.call("user.update", admin=True, UserID=seeded.acct.user_id, Status="Disabled")
    status, body = await api.request("GET", "/api/v1/events", headers=bearer(key))
    assert (status, body) == (403, {"Errors": [{"Code": 2, "Message": "Invalid sender domain"}]})


async def test_public_events_via_api_php(api: Api, seeded: Seeded) -> None:
    key = await sender_key(api, seeded.acct)
    res = await api.call("emailgateway.getevents.public", SenderAPIKey=key, RetrieveCount=2)
    assert res["TotalRecords"] == 13 and len(res["Events"]) == 2


# -- aggrevents --------------------------------------------------------------------------------


async def test_aggrevents(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    res = await api.call(
        "emailgateway.aggrevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["AggBuckets"] == [
        {"key": "accepted", "doc_count": 5},
        {"key": "delivery", "doc_count": 3},
        {"key": "bounce", "doc_count": 1},
        {"key": "deferred", "doc_count": 1},
        {"key": "rejected", "doc_count": 1},
    ]
    # 002's example request.
    res = await api.call(
        "EmailGateway.AggrEvents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
        AggregatedField="eventType",
        AggregateSize=2,
    )
    assert [b["key"] for b in res["AggBuckets"]] == ["accepted", "delivery"]
    res = await api.call(
        "emailgateway.aggrevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        AggregatedField="recipient-domain",
    )
    assert res["AggBuckets"] == [
        {"key": "gmail.com", "doc_count": 10},
        {"key": "yahoo.com", "doc_count": 2},
        {"key": "outlook.com", "doc_count": 1},
    ]
    res = await api.call(
        "emailgateway.aggrevents",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        AggregatedField="smtp-code",
        EndDate="2026-01-31",
        StartDate="2026-01-01",
    )
    assert res["AggBuckets"][0] == {"key": 250, "doc_count": 8}
    assert (await api.call("emailgateway.aggrevents", APIKey=acct.api_key))["ErrorCode"] == 1
    foreign = await api.call(
        "emailgateway.aggrevents", APIKey=acct.api_key, DomainID=seeded.other.domain_id
    )
    assert foreign["ErrorCode"] == 2


# -- exportevents ------------------------------------------------------------------------------


async def export(api: Api, **params: Any) -> tuple[int, dict[str, str], bytes]:
    query = {"Command": "emailgateway.exportevents", **{k: str(v) for k, v in params.items()}}
    async with api.session.get(f"{api.base}/api.php", params=query) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_exportevents_csv(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    status, headers, body = await export(
        api,
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
    )
    assert status == 200
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers["Content-Disposition"].startswith('attachment; filename="transactional-events-')
    assert headers["X-Octeth-Export-Total"] == "11"
    assert "X-Octeth-Export-Truncated" not in headers
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body[3:].decode("utf-8"))))
    # The documents' eight columns, then the reply, the attempt and the next attempt.
    assert rows[0] == [
        "Time",
        "Event",
        "MessageID",
        "From",
        "To",
        "Subject",
        "Domain",
        "SMTPCode",
        "SMTPResponse",
        "Attempt",
        "NextAttemptAt",
    ]
    assert len(rows) == 12
    assert rows[1][:2] == ["2026-01-10T12:08:20Z", "accepted"]  # newest first: m5 at T0+500
    bounced = [r for r in rows if r[1] == "bounced"]
    assert bounced == [
        [
            "2026-01-10T12:00:05Z",
            "bounced",
            "m1",
            "sender@example.com",
            "b@yahoo.com",
            "Welcome to Apex",
            "yahoo.com",
            "550",
            "550 5.1.1 no such user",
            "",
            "",
        ]
    ]
    # Formula injection: cells starting with = + - @ tab CR are quoted.
    m3 = next(r for r in rows if r[2] == "m3")
    assert m3[3] == "'+evil@example.com" and m3[5] == '\'=HYPERLINK("x")'
    # Filters: Event (any spelling), MessageID over Query.
    _, headers, body = await export(
        api,
        APIKey=acct.api_key,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
        Event="accepted-by-mta",
    )
    assert headers["X-Octeth-Export-Total"] == "4"  # includes second.example
    _, headers, _ = await export(
        api,
        APIKey=acct.api_key,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
        MessageID="m1",
        Query="nothing matches this",
    )
    assert headers["X-Octeth-Export-Total"] == "4"
    # Default period: the last 30 days (no events).
    _, headers, body = await export(api, APIKey=acct.api_key)
    assert headers["X-Octeth-Export-Total"] == "0" and body.count(b"\r\n") == 1
    # POST works too.
    async with api.session.post(
        f"{api.base}/api.php",
        json={
            "Command": "emailgateway.exportevents",
            "APIKey": acct.api_key,
            "StartDate": "2026-01-10",
            "EndDate": "2026-01-10",
        },
    ) as resp:
        assert resp.status == 200 and resp.headers["X-Octeth-Export-Total"] == "13"


async def test_exportevents_errors(api: Api, seeded: Seeded) -> None:
    status, _, body = await export(api, APIKey=seeded.acct.api_key, DomainID=seeded.other.domain_id)
    assert status == 200
    assert (
        body
        == b'{"Success":false,"ErrorCode":2,"ErrorText":"DomainID supplied but not owned by the caller"}'
    )
    status, _, body = await export(api, APIKey="wrong")
    assert b'"ErrorCode":99998' in body
    status, _, body = await export(api, AdminAPIKey=ADMIN_KEY, UserID=999)
    assert body == b'{"Success":false,"ErrorCode":6,"ErrorText":"Invalid UserID"}'
    status, _, body = await export(api, AdminAPIKey=ADMIN_KEY, DomainID=999)
    assert b'"ErrorCode":2' in body


async def test_exportevents_caps_at_10000(api: Api, services: Services, seeded: Seeded) -> None:
    acct = seeded.acct
    async with queue_writer(services) as w:
        for i in range(10_050):
            outcome(w, acct, None, f"r{i}@example.net", ev.REJECTED, T0 + 1000 + i / 100, 550)
    status, headers, body = await export(
        api, APIKey=acct.api_key, StartDate="2026-01-10", EndDate="2026-01-10"
    )
    assert status == 200
    assert headers["X-Octeth-Export-Total"] == str(10_050 + 13)  # + both domains of January 10
    assert headers["X-Octeth-Export-Truncated"] == "1"
    assert headers["X-Octeth-Export-Limit"] == "10000"
    rows = list(csv.reader(io.StringIO(body[3:].decode("utf-8"))))
    assert len(rows) == 10_001  # the header and the first 10,000 events
    assert len({r[4] for r in rows[1:]}) == 10_000  # no row twice across the 1,000-row chunks
