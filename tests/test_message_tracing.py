"""Tracing a message (issue: the admin reads every account's events; a message is found by
queue id or Message-ID header; the next retry time and the attempt count are visible in the
API and the CSV export)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.services import Services
from tests.conftest import ADMIN_KEY, Api
from tests.eventseed import Seeded, seed
from tests.provision import wait_until
from tests.relayfix import start_relay, stop_relay


@pytest.fixture
async def seeded(api: Api, services: Services) -> Seeded:
    return await seed(api, services)


async def test_getmessage_by_queue_id_and_header(api: Api, seeded: Seeded) -> None:
    acct = seeded.acct
    for ref in ("m1", "<m1@relay.test>", "m1@relay.test"):
        res = await api.call("emailgateway.getmessage", APIKey=acct.api_key, MessageID=ref)
        assert res["Success"] is True, res
        (msg,) = res["Messages"]
        assert (msg["MessageID"], msg["SenderDomain"], msg["Subject"]) == (
            "m1",
            "example.com",
            "Welcome to Apex",
        )
        # The queue writer of the tests commits no outcome to the recipients rows, only events.
        assert [r["Recipient"] for r in msg["Recipients"]] == ["a@gmail.com", "b@yahoo.com"]
        assert [r["State"] for r in msg["Recipients"]] == ["queued", "queued"]
        assert [e["event"] for e in msg["Events"]] == ["accepted", "accepted", "delivery", "bounce"]
        assert "user-id" not in msg["Events"][0]
    # Another user's message is "not found"; so is nothing at all.
    other = seeded.other
    res = await api.call("emailgateway.getmessage", APIKey=other.api_key, MessageID="m1")
    assert (res["Success"], res["ErrorCode"], res["ErrorText"]) == (False, 2, "Message not found")
    res = await api.call("emailgateway.getmessage", APIKey=acct.api_key)
    assert res["ErrorCode"] == 1
    # The admin sees every account's; UserID narrows it.
    res = await api.call("emailgateway.getmessage", admin=True, MessageID="x1")
    assert res["Messages"][0]["UserID"] == other.user_id
    assert res["Messages"][0]["Events"][0]["user-id"] == other.user_id
    res = await api.call("emailgateway.getmessage", admin=True, MessageID="x1", UserID=acct.user_id)
    assert res["ErrorCode"] == 2
    res = await api.call("emailgateway.getmessage", admin=True, MessageID="x1", UserID=9999)
    assert (res["ErrorCode"], res["ErrorText"]) == (6, "Invalid UserID")


async def test_admin_reads_every_account(api: Api, seeded: Seeded) -> None:
    acct, other = seeded.acct, seeded.other
    page = {"StartFrom": 0, "RetrieveCount": 100}
    everyone = await api.call("emailgateway.getevents", admin=True, **page)
    assert everyone["TotalRecords"] == 16  # the 15 of acct and other's one
    assert {e["user-id"] for e in everyone["Events"]} == {acct.user_id, other.user_id}
    one = await api.call("emailgateway.getevents", admin=True, UserID=other.user_id, **page)
    assert one["TotalRecords"] == 1 and one["Events"][0]["message"]["id"] == "x1"
    res = await api.call(
        "emailgateway.getevents", admin=True, DomainID=acct.domain_id, Event="bounce", **page
    )
    assert res["TotalRecords"] == 1
    # A domain that is not the named account's: code 2, as for a user.
    res = await api.call(
        "emailgateway.getevents", admin=True, UserID=other.user_id, DomainID=acct.domain_id, **page
    )
    assert res["ErrorCode"] == 2
    res = await api.call("emailgateway.getevents", admin=True, UserID="x", **page)
    assert res["ErrorCode"] == 6
    res = await api.call("emailgateway.getevents", admin=True, MessageID="<m2@relay.test>", **page)
    assert res["TotalRecords"] == 3  # m2: accepted, deferred, delivered
    res = await api.call(
        "emailgateway.aggrevents",
        admin=True,
        DomainID=other.domain_id,
        StartDate="2026-01-01",
        EndDate="2026-01-31",
    )
    assert res["AggBuckets"] == [{"key": "accepted", "doc_count": 1}]
    query = {
        "Command": "emailgateway.exportevents",
        "AdminAPIKey": ADMIN_KEY,
        "UserID": str(other.user_id),
        "StartDate": "2026-01-01",
        "EndDate": "2026-01-31",
    }
    async with api.session.get(f"{api.base}/api.php", params=query) as resp:
        assert resp.headers["X-Octeth-Export-Total"] == "1"
        rows = list(csv.reader(io.StringIO((await resp.read())[3:].decode())))
    assert rows[1][2] == "x1"
    # A user key never reaches beyond its account, UserID or not.
    res = await api.call(
        "emailgateway.getevents", APIKey=other.api_key, UserID=acct.user_id, **page
    )
    assert res["TotalRecords"] == 1


async def test_deferred_message_shows_its_attempts(tmp_path: Path, db_url: str) -> None:
    """A real node: mail accepted over SMTP with no delivery server for its group is deferred
    by the delivery worker; its next attempt and attempt count show in getmessage, getevents
    and the CSV export."""
    running, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_DELIVERY_ENABLED="true",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
    )
    try:
        acct = await running.new_account()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
        await client.connect()
        await client.login(acct.username, acct.password)
        message = b"From: app@example.com\r\nTo: x@example.net\r\nSubject: t\r\n\r\nhi\r\n"
        _, reply = await client.sendmail("app@example.com", ["x@example.net"], message)
        await client.quit()
        queue_id = reply.rsplit(" ", 1)[1]
        api = running.api

        async def traced() -> dict[str, Any] | None:
            res = await api.call("emailgateway.getmessage", admin=True, MessageID=queue_id)
            recipient = res["Messages"][0]["Recipients"][0]
            return res if recipient["State"] == "deferred" else None

        await wait_until(traced, what="the recipient deferred")
        res = await traced()
        assert res is not None
        (recipient,) = res["Messages"][0]["Recipients"]
        assert recipient["Attempts"] == 1 and recipient["NextAttemptAt"] is not None
        assert "no delivery server" in recipient["LastResponse"]
        events = await api.call(
            "emailgateway.getevents",
            APIKey=acct.api_key,
            StartFrom=0,
            RetrieveCount=10,
            Event="deferred",
        )
        status = events["Events"][0]["delivery-status"]
        assert status["attempt"] == 1 and status["next-attempt-at"] == recipient["NextAttemptAt"]
        query = {
            "Command": "emailgateway.exportevents",
            "APIKey": acct.api_key,
            "Event": "deferred",
        }
        async with session.get(f"{api.base}/api.php", params=query) as resp:
            rows = list(csv.DictReader(io.StringIO((await resp.read())[3:].decode())))
        assert rows[0]["Attempt"] == "1" and rows[0]["NextAttemptAt"].endswith("Z")
        assert "no delivery server" in rows[0]["SMTPResponse"]
    finally:
        await stop_relay(running, session)
