"""Webhook deliveries end to end: a relay node, a real HTTP receiver on loopback (allowed by
``webhooks.allow_networks``), real SMTP submission and delivery, SQLite and PostgreSQL.

Signatures are checked with the reference implementation (``standardwebhooks`` on PyPI).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from relay import events
from relay.queue.model import NewEvent, NewMessage
from relay.services import Services
from relay.store import schema as t
from tests.provision import wait_until
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay
from tests.sink import Sink
from tests.webhookreceiver import Receiver, Request

BASE_ENV = {
    "RELAY_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8",
    "RELAY_WEBHOOKS_POLL_INTERVAL": "0.2",
    "RELAY_WEBHOOKS_RETRY_BASE": "0.3",
    "RELAY_WEBHOOKS_RETRY_JITTER": "0",
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


def svc(running: RunningRelay) -> Services:
    assert running.relay.services is not None
    return running.relay.services


async def add_webhook(running: RunningRelay, acct: Account, event: str, url: str) -> int:
    res = await running.api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event=event,
        WebhookURL=url,
    )
    assert res["Success"] is True, res
    return int(res["NewWebhookID"])


async def signing_key(running: RunningRelay, acct: Account) -> str:
    res = await running.api.call(
        "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
    )
    return str(res["SigningKey"])


def verified(request: Request, key: str) -> Any:
    """The payload, after the reference library verified its signature (raises otherwise)."""
    return Webhook(key.encode()).verify(request.body, request.headers)


async def queue_events(
    running: RunningRelay, acct: Account, names: list[str], *, rcpt: str = "r@example.net"
) -> str:
    """A message and events about it, through the node's own queue writer (the path every
    writer of events shares); returns the message id."""
    writer = running.relay.writer
    assert writer is not None
    mid = str(uuid.uuid4())
    await writer.submit(
        NewMessage(
            id=mid,
            user_id=acct.user_id,
            domain_id=acct.domain_id,
            source="api",
            mail_from="app@example.com",
            recipients=[rcpt],
            body=b"Subject: hi\r\n\r\nhi\r\n",
            header_from="App <app@example.com>",
            subject="Hello",
        )
    )
    for name in names:
        writer.record(
            NewEvent(
                user_id=acct.user_id,
                domain_id=acct.domain_id,
                event=name,
                recipient=rcpt,
                message_id=mid,
                smtp_code=250,
                smtp_response="250 2.0.0 OK",
                data={"URL": "https://example.com/x"} if name == events.CLICKED else None,
            )
        )
    return mid


async def deliveries(running: RunningRelay, **where: Any) -> list[Any]:
    d = t.webhook_deliveries
    q = select(d).order_by(d.c.id)
    for column, value in where.items():
        q = q.where(d.c[column] == value)
    async with svc(running).db.read() as conn:
        return list((await conn.execute(q)).all())


async def all_in_state(running: RunningRelay, state: str, count: int) -> bool:
    rows = await deliveries(running)
    return len(rows) == count and all(r.state == state for r in rows)


async def route_to(running: RunningRelay, sink: Sink) -> None:
    made = await running.api.call(
        "deliveryserver.create", admin=True, DeliveryServerName="downstream",
        SendMethodSMTPHost="127.0.0.1", SendMethodSMTPPort=sink.port, SendMethodSMTPSecure="false",
        SendMethodSMTPTimeout=10, SendMethodSMTPAuth=False, DomainSettings_LinkTracking="t.x.com",
        DomainSettings_OpenTracking="o.x.com", DomainSettings_MFrom="b.x.com",
    )  # fmt: skip
    assigned = await running.api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=made["DeliveryServerID"],
        UserGroupID=1,
    )
    assert assigned["Success"], assigned


async def test_every_event_arrives_once_per_webhook_signed(
    tmp_path: Path, db_url: str, sink: Sink, receiver: Receiver
) -> None:
    running, session = await start_relay(
        tmp_path, db_url, RELAY_DELIVERY_ENABLED="true", RELAY_DELIVERY_POLL_INTERVAL="0.2",
        **BASE_ENV,
    )  # fmt: skip
    try:
        acct = await running.new_account()
        await route_to(running, sink)
        sink.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
        # Both vocabularies; two webhooks for deliveries.
        subscriptions = {
            "/delivery": "delivery",
            "/delivered": "delivered",
            "/bounce": "bounced",
            "/open": "open",
            "/click": "clicked",
            "/unsubscribe": "unsubscribe",
            "/complaint": "complained",
        }
        for path, event in subscriptions.items():
            await add_webhook(running, acct, event, receiver.url(path))
        key = await signing_key(running, acct)

        # delivered and bounced: through SMTP, the queue and the delivery worker.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
        await client.connect()
        await client.login(acct.username, acct.password)
        message = (
            b"From: App <app@example.com>\r\nTo: ok@example.net\r\nSubject: webhooks\r\n\r\nhi\r\n"
        )
        errors, reply = await client.sendmail(
            "app@example.com", ["ok@example.net", "nobody@example.net"], message
        )
        await client.quit()
        assert errors == {}
        smtp_id = reply.rsplit(" ", 1)[1]
        # opened, clicked, unsubscribed, complained: recorded like their writers will, in the
        # events table; the trigger covers any writer.
        engagement_id = await queue_events(
            running, acct, [events.OPENED, events.CLICKED, events.UNSUBSCRIBED, events.COMPLAINED]
        )

        # Both messages are delivered downstream: two delivered events, one bounced, four
        # engagement events. Each reaches every webhook subscribed to it, once.
        await wait_until(lambda: len(receiver.requests) >= 9, what="nine webhook posts")
        await wait_until(
            lambda: all_in_state(running, "delivered", 9), what="every delivery recorded"
        )
        counts = {path: len(receiver.at(path)) for path in subscriptions}
        assert counts == {p: 2 if p in ("/delivery", "/delivered") else 1 for p in subscriptions}
        assert len({r.webhook_id for r in receiver.requests}) == 9
        for request in receiver.requests:
            assert request.headers["content-type"] == "application/json"
            body = verified(request, key)
            assert body == request.json
            data = body["data"]
            assert data["DomainID"] == acct.domain_id and data["Domain"] == "example.com"
            assert isinstance(data["LoggedAt"], int) and isinstance(data["EventID"], int)
            assert body["timestamp"].endswith("Z")
            headers = data["Message"]["Headers"]
            assert headers["To"] == data["Recipient"]
            assert headers["From"] == "App <app@example.com>"
            if data["MessageID"] == smtp_id:
                assert headers["Subject"] == "webhooks"
            else:
                assert data["MessageID"] == engagement_id and headers["Subject"] == "Hello"
        for path in ("/delivery", "/delivered"):
            posts = sorted(
                (r.json for r in receiver.at(path)), key=lambda b: b["data"]["Recipient"]
            )
            assert [b["type"] for b in posts] == ["delivered", "delivered"]
            assert [b["data"]["Recipient"] for b in posts] == ["ok@example.net", "r@example.net"]
            assert posts[0]["data"]["MessageID"] == smtp_id
            assert posts[0]["data"]["SMTPResponse"].startswith("250")
        (bounce,) = (r.json for r in receiver.at("/bounce"))
        assert bounce["type"] == "bounced" and bounce["data"]["Recipient"] == "nobody@example.net"
        assert bounce["data"]["SMTPResponse"].startswith("550")
        by_path = {r.path: r.json for r in receiver.requests}
        assert by_path["/open"]["type"] == "opened"
        assert by_path["/click"]["type"] == "clicked"
        assert by_path["/click"]["data"]["URL"] == "https://example.com/x"
        assert by_path["/unsubscribe"]["type"] == "unsubscribed"
        assert by_path["/complaint"]["type"] == "complained"
        # Nothing else was queued (accepted, suppressed: no webhook subscribes to them), and
        # every delivery was posted exactly once.
        assert len(await deliveries(running)) == 9
        async with svc(running).db.read() as conn:
            attempts = await conn.scalar(select(func.count()).select_from(t.webhook_attempts))
        assert attempts == 9
    finally:
        await stop_relay(running, session)


async def test_retry_after_503_same_id_and_rotated_key_applies(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    running, session = await start_relay(tmp_path, db_url, **BASE_ENV)
    try:
        acct = await running.new_account()
        wid = await add_webhook(running, acct, "delivery", receiver.url("/hook"))
        first_key = await signing_key(running, acct)
        receiver.answer("/hook", 503, 200)
        receiver.hold("/hook")
        await queue_events(running, acct, [events.DELIVERED])
        await receiver.arrived["/hook"].wait()
        # Rotated while the first attempt is in flight: the retry is signed with the new key.
        rotated = await running.api.call(
            "emailgateway.regeneratesigningkey", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        receiver.release("/hook")

        async def failed_once() -> bool:
            res = await running.api.call(
                "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
            )
            return bool(res["Webhooks"][0]["FailureCount"] == 1 or len(receiver.requests) > 1)

        await wait_until(failed_once, what="the 503 recorded")
        await wait_until(lambda: all_in_state(running, "delivered", 1), what="the retry delivered")
        first, second = receiver.requests
        assert first.webhook_id == second.webhook_id and first.webhook_id.startswith("msg_")
        assert first.body == second.body
        assert verified(first, first_key)
        assert verified(second, rotated["SigningKey"])
        with pytest.raises(Exception):  # noqa: B017 (the reference library's error)
            verified(second, first_key)

        listed = await running.api.call(
            "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        hook = listed["Webhooks"][0]
        assert hook["LastStatus"] == 200 and hook["LastError"] == ""
        assert hook["FailureCount"] == 0 and hook["LastAttemptAt"]
        history = await running.api.call(
            "emailgateway.getwebhookdeliveries",
            APIKey=acct.api_key,
            DomainID=acct.domain_id,
            WebhookID=wid,
        )
        assert history["Success"] is True and history["PendingDeliveries"] == 0
        newest, oldest = history["Attempts"]
        assert (oldest["Attempt"], oldest["Result"], oldest["HTTPStatus"]) == (1, "retry", 503)
        assert oldest["Error"] == "HTTP 503" and oldest["Response"] == "answer 503"
        assert (newest["Attempt"], newest["Result"], newest["HTTPStatus"]) == (2, "delivered", 200)
        assert newest["WebhookMessageID"] == oldest["WebhookMessageID"] == first.webhook_id
        assert newest["Event"] == "delivered" and newest["LatencyMs"] >= 0
    finally:
        await stop_relay(running, session)


async def test_given_up_after_the_limit_with_an_event(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    running, session = await start_relay(
        tmp_path, db_url, RELAY_WEBHOOKS_MAX_ATTEMPTS="3", **BASE_ENV
    )
    try:
        acct = await running.new_account()
        wid = await add_webhook(running, acct, "bounce", receiver.url("/down"))
        receiver.answer("/down", 500)
        mid = await queue_events(running, acct, [events.BOUNCED])
        await wait_until(lambda: all_in_state(running, "failed", 1), what="given up")
        assert len(receiver.at("/down")) == 3
        assert len({r.webhook_id for r in receiver.requests}) == 1
        e = t.events
        async with svc(running).db.read() as conn:
            failed = (await conn.execute(select(e).where(e.c.event == "webhook-failed"))).all()
        (row,) = failed
        assert row.message_id == mid and row.domain_id == acct.domain_id
        data = row.data if isinstance(row.data, dict) else json.loads(row.data)
        assert data["WebhookID"] == wid and data["Attempts"] == 3 and data["HTTPStatus"] == 500
        history = await running.api.call(
            "emailgateway.getwebhookdeliveries",
            APIKey=acct.api_key,
            DomainID=acct.domain_id,
            WebhookID=wid,
        )
        assert [a["Result"] for a in history["Attempts"]] == ["failed", "retry", "retry"]
        assert history["FailureCount"] == 3
        listed = await running.api.call(
            "emailgateway.getwebhooks", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        assert listed["Webhooks"][0]["LastError"] == "HTTP 500"
        assert listed["Webhooks"][0]["FailureCount"] == 3
    finally:
        await stop_relay(running, session)


async def test_hanging_endpoints_do_not_hold_the_others(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    # Three endpoints hang, more than the process's two POST slots: a hang ends only when the
    # test releases it (webhooks.timeout is a minute), so if the healthy webhook waited behind
    # them it would not get its posts before the wait below gives up.
    running, session = await start_relay(
        tmp_path, db_url, RELAY_WEBHOOKS_CONCURRENCY="2", RELAY_WEBHOOKS_TIMEOUT="60",
        RELAY_WEBHOOKS_LEASE_SECONDS="90", RELAY_WEBHOOKS_PER_ENDPOINT_CONCURRENCY="1",
        RELAY_WEBHOOKS_BATCH_SIZE="5", **BASE_ENV,
    )  # fmt: skip
    hanging = ["/hangs1", "/hangs2", "/hangs3"]
    try:
        acct = await running.new_account()
        for path in [*hanging, "/fine"]:
            await add_webhook(running, acct, "delivery", receiver.url(path))
            if path != "/fine":
                receiver.hold(path)
        for _ in range(12):
            await queue_events(running, acct, [events.DELIVERED])
        await wait_until(lambda: len(receiver.at("/fine")) >= 12, timeout=45, what="/fine")
        # The healthy webhook did not wait for the hanging ones; they may be claimed after it (the
        # claim order is free), so wait for each to hang with its own one slot, never more.
        await wait_until(
            lambda: all(receiver.open[path] == 1 for path in hanging), timeout=30, what="hanging"
        )
        for path in hanging:
            assert receiver.max_open[path] == 1
            receiver.release(path)
        await wait_until(lambda: all_in_state(running, "delivered", 48), what="all delivered")
        assert all(receiver.max_open[path] == 1 for path in hanging)
    finally:
        await stop_relay(running, session)


async def test_ssrf_refused_at_send_time_then_exempt(
    tmp_path: Path, db_url: str, receiver: Receiver, dns_stub: Any
) -> None:
    dns_stub.a("hooks.example.net", "127.0.0.1")
    env = {k: v for k, v in BASE_ENV.items() if k != "RELAY_WEBHOOKS_ALLOW_NETWORKS"}
    env["RELAY_DNS_NAMESERVERS"] = dns_stub.nameserver
    running, session = await start_relay(tmp_path, db_url, **env)
    try:
        acct = await running.new_account()
        # Saved: a public-looking name. It resolves to loopback, which only sending can see.
        named = await add_webhook(
            running, acct, "delivery", receiver.url("/named", host="hooks.example.net")
        )
        # Stored before the exemption was withdrawn (or by hand): a literal in another notation.
        literal = await add_webhook(running, acct, "delivery", "https://hooks.example.org/")
        async with svc(running).db.write() as conn:
            await conn.execute(
                update(t.webhooks)
                .where(t.webhooks.c.id == literal)
                .values(url=f"http://0x7f.1:{receiver.port}/literal")
            )
        await queue_events(running, acct, [events.DELIVERED])

        async def refused(webhook_id: int) -> list[Any]:
            res = await running.api.call(
                "emailgateway.getwebhookdeliveries",
                APIKey=acct.api_key,
                DomainID=acct.domain_id,
                WebhookID=webhook_id,
            )
            return list(res["Attempts"])

        await wait_until(lambda: refused(named), what="named refused")
        await wait_until(lambda: refused(literal), what="literal refused")
        (attempt, *_rest) = await refused(named)
        assert attempt["Result"] == "retry" and attempt["HTTPStatus"] is None
        assert attempt["Error"].startswith("refused: hooks.example.net resolves to 127.0.0.1")
        (attempt, *_rest) = await refused(literal)
        assert attempt["Error"].startswith("refused: 127.0.0.1")
        assert receiver.requests == []
        assert [r.state for r in await deliveries(running)] == ["pending", "pending"]
    finally:
        await stop_relay(running, session)

    # The operator exempts the network: the same deliveries now arrive (after a restart).
    env["RELAY_WEBHOOKS_ALLOW_NETWORKS"] = "127.0.0.0/8"
    running, session = await start_relay(tmp_path, db_url, **env)
    try:
        await wait_until(lambda: all_in_state(running, "delivered", 2), what="delivered")
        assert sorted(r.path for r in receiver.requests) == ["/literal", "/named"]
        named_request = receiver.at("/named")[0]
        assert named_request.headers["host"] == f"hooks.example.net:{receiver.port}"
    finally:
        await stop_relay(running, session)


async def test_restart_in_the_middle_loses_nothing(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    env = {**BASE_ENV, "RELAY_WEBHOOKS_TIMEOUT": "2", "RELAY_WEBHOOKS_LEASE_SECONDS": "12"}
    running, session = await start_relay(tmp_path, db_url, **env)
    try:
        acct = await running.new_account()
        await add_webhook(running, acct, "delivery", receiver.url("/hook"))
        receiver.answer("/hook", 200)
        for _ in range(3):
            await queue_events(running, acct, [events.DELIVERED])
        await wait_until(lambda: all_in_state(running, "delivered", 3), what="first three")
        receiver.hold("/hook")
        for _ in range(5):
            await queue_events(running, acct, [events.DELIVERED])
        await wait_until(lambda: receiver.open["/hook"] >= 1, what="a post in flight")
    finally:
        # Stopped with posts in flight: they get webhooks.timeout, then are released.
        await stop_relay(running, session)
    pending = [r for r in await _rows(tmp_path, db_url) if r.state == "pending"]
    assert len(pending) == 5 and all(r.lease_owner is None for r in pending)

    receiver.release("/hook")
    running, session = await start_relay(tmp_path, db_url, **env)
    try:
        await wait_until(lambda: all_in_state(running, "delivered", 8), what="all eight")
        assert len({r.webhook_id for r in receiver.requests}) == 8
    finally:
        await stop_relay(running, session)


async def _rows(tmp_path: Path, db_url: str) -> list[Any]:
    from relay.store.db import Database

    db = Database(db_url)
    try:
        async with db.read() as conn:
            return list((await conn.execute(select(t.webhook_deliveries))).all())
    finally:
        await db.close()


async def test_metrics_show_the_webhook_side(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    running, session = await start_relay(tmp_path, db_url, **BASE_ENV)
    try:
        acct = await running.new_account()
        await add_webhook(running, acct, "delivery", receiver.url("/m"))
        await queue_events(running, acct, [events.DELIVERED])
        await wait_until(lambda: all_in_state(running, "delivered", 1), what="delivered")
        status, text = await running.api.request("GET", "/metrics")
        assert status == 200
        for name in (
            'relay_webhook_attempts_total{result="delivered"}',
            'relay_webhook_deliveries_total{outcome="delivered"}',
            "relay_webhook_attempt_seconds_bucket",
            "relay_webhook_backlog",
            "relay_webhook_oldest_seconds",
        ):
            assert name in text, name
    finally:
        await stop_relay(running, session)
