"""Delivery (issue "relay core"): claim, route, deliver over real SMTP to a sink, record.

Everything is real: the admin API sets up users, domains and delivery servers; the queue
writer commits messages; a DeliveryService delivers them to aiosmtpd sinks on loopback; both
SQLite and PostgreSQL. Waits are for states, with generous deadlines; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mta.worker import DeliveryService
from relay import config, events, metrics
from relay.node import running_node
from relay.queue.backend import open_backend
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.services import Services
from relay.store import schema as t
from relay.store.db import StorageUnavailable
from tests.conftest import Api, free_port, make_settings
from tests.provision import Account, assign, make_account, route_to, wait_until
from tests.sink import Sink

FAST = {
    "RELAY_DELIVERY_RETRY_BASE": "0.2",
    "RELAY_DELIVERY_RETRY_MAX_INTERVAL": "0.4",
    "RELAY_DELIVERY_RETRY_JITTER": "0",
    "RELAY_DELIVERY_POLL_INTERVAL": "0.1",
    "RELAY_DELIVERY_STOP_TIMEOUT": "5",
}


@pytest.fixture
def settings(settings: config.Settings) -> config.Settings:
    """conftest's settings with FAST applied (same values as the environment overrides)."""
    fast = make_settings(Path("/nonexistent"), None, **FAST)
    settings.delivery = fast.delivery
    settings.dkim = fast.dkim
    return settings


def body(subject: str = "hello") -> bytes:
    return (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; b=abc\r\n"
        b"From: Sender <sender@example.com>\r\n"
        b"To: rcpt@example.net\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@example.com>\r\n"
        b"\r\n"
        b"Hello.\r\n"
        b".leading dot survives dot-stuffing\r\n"
        b"\xc3\xa9t\xc3\xa9 in 8 bits\r\n"
    )


@pytest.fixture
async def writer(services: Services) -> AsyncIterator[QueueWriter]:
    w = QueueWriter(services.db, on_commit=services.notify_enqueued)
    await w.start()
    yield w
    await w.stop()


@pytest.fixture
async def delivery(services: Services) -> AsyncIterator[Any]:
    """Start DeliveryServices on demand (after a test adjusted settings); all stopped at the end."""
    started: list[DeliveryService] = []

    async def start(svc: Services = services) -> DeliveryService:
        service = DeliveryService(svc)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop(5, None)


async def submit(
    writer: QueueWriter,
    account: Account,
    recipients: list[str],
    *,
    mail_from: str = "sender@example.com",
    data: bytes | None = None,
    **fields: Any,
) -> NewMessage:
    message = NewMessage(
        id=str(uuid.uuid4()),
        user_id=account.user_id,
        domain_id=account.domain_id,
        source="smtp",
        mail_from=mail_from,
        recipients=recipients,
        body=data if data is not None else body(),
        header_from="sender@example.com",
        subject="hello",
        **fields,
    )
    await writer.submit(message)
    return message


async def recipients_of(services: Services, message_id: str) -> dict[str, Any]:
    r = t.recipients
    async with services.db.read() as conn:
        rows = (await conn.execute(select(r).where(r.c.message_id == message_id))).all()
    return {row.rcpt: row for row in rows}


async def states(services: Services, message_id: str) -> dict[str, str]:
    return {k: v.state for k, v in (await recipients_of(services, message_id)).items()}


async def events_of(services: Services, message_id: str) -> list[Any]:
    e = t.events
    async with services.db.read() as conn:
        q = select(e).where(e.c.message_id == message_id).order_by(e.c.id)
        return list((await conn.execute(q)).all())


async def wait_states(
    services: Services, message_id: str, expected: dict[str, str], timeout: float = 30
) -> None:
    async def reached() -> bool:
        return await states(services, message_id) == expected

    await wait_until(reached, timeout=timeout, what=f"{message_id} -> {expected}")


async def message_body(services: Services, message_id: str) -> bytes | None:
    async with services.db.read() as conn:
        value = await conn.scalar(select(t.messages.c.body).where(t.messages.c.id == message_id))
    return bytes(value) if value is not None else None


# -- the basic path ------------------------------------------------------------------------------


async def test_delivers_the_exact_stored_bytes(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    server_id = await route_to(api, sink.port)
    await delivery()
    data = body("exact bytes")
    msg = await submit(writer, account, ["rcpt@example.net"], data=data)
    bounce = await submit(writer, account, ["other@example.net"], mail_from="", data=data)
    await wait_states(services, msg.id, {"rcpt@example.net": "delivered"})
    await wait_states(services, bounce.id, {"other@example.net": "delivered"})

    by_rcpt = {m.rcpt_tos[0]: m for m in sink.messages}
    assert by_rcpt["rcpt@example.net"].data == data
    # The VERP return path at the sender domain's return-path host (mta/returnpath.py).
    assert by_rcpt["rcpt@example.net"].mail_from.startswith("b1-")
    assert by_rcpt["rcpt@example.net"].mail_from.endswith("@mail.example.com")
    assert by_rcpt["other@example.net"].mail_from == ""  # MAIL FROM:<> stays
    assert sink.delivered_to("rcpt@example.net") == 1 and not by_rcpt["rcpt@example.net"].tls

    row = (await recipients_of(services, msg.id))["rcpt@example.net"]
    assert (row.attempts, row.last_code, row.lease_owner, row.lease_until) == (1, 250, None, None)
    evs = await events_of(services, msg.id)
    assert [e.event for e in evs] == [events.ACCEPTED, events.DELIVERED]
    delivered = evs[1]
    assert delivered.smtp_code == 250 and delivered.smtp_response.startswith("250 ")
    assert delivered.data["server_id"] == server_id and delivered.data["attempt"] == 1
    assert delivered.data["stage"] == "DATA" and delivered.data["seconds"] >= 0
    # Every recipient is final: the body is no longer kept.
    assert await message_body(services, msg.id) is None


async def test_one_refused_recipient_does_not_fail_the_others(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    # Cached "not suppressed" before the bounce: the bounce must invalidate it.
    assert await services.directory.suppression(account.user_id, "gone@example.net") is None
    await delivery()
    rcpts = ["a@example.net", "gone@example.net", "b@example.net"]
    msg = await submit(writer, account, rcpts)
    await wait_states(
        services,
        msg.id,
        {"a@example.net": "delivered", "gone@example.net": "bounced", "b@example.net": "delivered"},
    )
    # One transaction per recipient (each has its own VERP return path), on one connection.
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
        "a@example.net",
        "b@example.net",
    ]
    assert len({m.connection for m in sink.messages}) == 1

    evs = await events_of(services, msg.id)
    bounced = [e for e in evs if e.event == events.BOUNCED]
    assert [(e.recipient, e.smtp_code, e.smtp_response) for e in bounced] == [
        ("gone@example.net", 550, "550 5.1.1 no such user")
    ]
    assert bounced[0].data["stage"] == "RCPT"
    suppressed = [e for e in evs if e.event == events.SUPPRESSED]
    assert [(e.recipient, e.smtp_code) for e in suppressed] == [("gone@example.net", 550)]
    s = t.suppressions
    async with services.db.read() as conn:
        rows = (await conn.execute(select(s))).all()
    assert [(r.user_id, r.email, r.source) for r in rows] == [
        (account.user_id, "gone@example.net", "bounce")
    ]
    assert rows[0].reason == "550 5.1.1 no such user"
    assert (
        await services.directory.suppression(account.user_id, "gone@example.net")
        == "account suppression list"
    )


async def test_permanent_failure_without_addressing_status_is_not_suppressed(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.data_reply = "554 5.7.1 message content rejected"
    sink.rcpt_replies["sender-problem@example.net"] = "550 5.1.8 bad sender system address"
    await delivery()
    msg = await submit(writer, account, ["x@example.net"])
    other = await submit(writer, account, ["sender-problem@example.net"])
    await wait_states(services, msg.id, {"x@example.net": "bounced"})
    await wait_states(services, other.id, {"sender-problem@example.net": "bounced"})
    evs = await events_of(services, msg.id) + await events_of(services, other.id)
    assert [e.event for e in evs if e.event != events.ACCEPTED] == ["bounced", "bounced"]
    assert evs[1].smtp_response == "554 5.7.1 message content rejected"
    async with services.db.read() as conn:
        assert (await conn.execute(select(t.suppressions))).all() == []
    assert await message_body(services, msg.id) is None


async def test_temporary_failure_is_retried_until_delivered(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.fail_first(2, "451 4.3.0 try again later")
    await delivery()
    msg = await submit(writer, account, ["later@example.net"])
    await wait_states(services, msg.id, {"later@example.net": "delivered"})
    row = (await recipients_of(services, msg.id))["later@example.net"]
    assert row.attempts == 3 and sink.delivered_to("later@example.net") == 1
    evs = await events_of(services, msg.id)
    assert [e.event for e in evs] == ["accepted", "deferred", "deferred", "delivered"]
    first, second = evs[1], evs[2]
    assert (first.smtp_code, first.smtp_response) == (451, "451 4.3.0 try again later")
    assert first.data["attempt"] == 1 and second.data["attempt"] == 2
    # Backoff: retry_base * 2^(attempt-1), no jitter in these settings.
    assert second.data["next_attempt_at"] - second.created_at == pytest.approx(0.4, abs=0.01)
    assert first.data["next_attempt_at"] - first.created_at == pytest.approx(0.2, abs=0.01)


async def test_connection_failure_defers(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    account = await make_account(api)
    dead_port = free_port()  # nothing listens there
    server_id = await route_to(api, dead_port)
    await delivery()
    msg = await submit(writer, account, ["r@example.net"])

    async def deferred_twice() -> bool:
        return [e.event for e in await events_of(services, msg.id)].count("deferred") >= 2

    await wait_until(deferred_twice, what="two deferrals")
    evs = [e for e in await events_of(services, msg.id) if e.event == events.DEFERRED]
    assert evs[0].smtp_code is None and evs[0].data["stage"] == "connect"
    assert evs[0].data["server_id"] == server_id and str(dead_port) in evs[0].smtp_response


async def test_refused_auth_is_temporary(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    wrong = await make_sink(auth=("user", "right"))
    account = await make_account(api)
    await route_to(api, wrong.port, auth=("user", "wrong"))
    await delivery()
    msg = await submit(writer, account, ["auth@example.net"])

    async def deferred() -> bool:
        return any(e.event == events.DEFERRED for e in await events_of(services, msg.id))

    await wait_until(deferred, what="a deferral")
    ev = next(e for e in await events_of(services, msg.id) if e.event == events.DEFERRED)
    # A 535 from AUTH is about our credentials, not the recipient: deferred, not bounced.
    assert ev.smtp_code == 535 and ev.data["stage"] == "connect"
    assert await states(services, msg.id) == {"auth@example.net": "deferred"}
    assert wrong.messages == [] and wrong.auth_failures >= 1


async def test_421_closing_is_a_temporary_failure(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    sink.fail_first(1, "421 4.3.2 shutting down", stage="RCPT")
    account = await make_account(api)
    await route_to(api, sink.port)
    await delivery()
    msg = await submit(writer, account, ["closing@example.net"])
    await wait_states(services, msg.id, {"closing@example.net": "delivered"})
    evs = await events_of(services, msg.id)
    assert [e.event for e in evs] == ["accepted", "deferred", "delivered"]
    assert evs[1].smtp_code == 421 and evs[1].data["stage"] == "RCPT"
    assert sink.connections == 2  # the closed connection was not reused


# -- routing ------------------------------------------------------------------------------------


async def test_no_delivery_server_keeps_it_queued_with_a_reason(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    server_id = await route_to(api, sink.port, group=None)
    await delivery()
    msg = await submit(writer, account, ["wait@example.net"])

    async def deferred() -> bool:
        return any(e.event == events.DEFERRED for e in await events_of(services, msg.id))

    await wait_until(deferred, what="a deferral")
    assert await states(services, msg.id) == {"wait@example.net": "deferred"}
    ev = next(e for e in await events_of(services, msg.id) if e.event == events.DEFERRED)
    assert ev.smtp_code is None
    assert ev.smtp_response == (
        "no delivery server assigned to user group 1 for channel Transactional"
    )
    assert ev.data["reason"] == "no_route" and "server_id" not in ev.data
    assert sink.messages == []
    # Assigning a server (the admin API invalidates the cached routes) lets it go out.
    await assign(api, server_id)
    await wait_states(services, msg.id, {"wait@example.net": "delivered"})


async def test_spread_across_servers_and_failover(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    account = await make_account(api)
    first, second = await make_sink(), await make_sink()
    await route_to(api, free_port())  # assigned, but nothing listens: fail over from it
    await route_to(api, first.port)
    await route_to(api, second.port)
    await delivery()
    msgs = [await submit(writer, account, [f"r{i}@example.net"]) for i in range(6)]
    for i, m in enumerate(msgs):
        await wait_states(services, m.id, {f"r{i}@example.net": "delivered"})
    assert len(first.messages) + len(second.messages) == 6
    assert first.messages and second.messages  # spread, not all on one
    for m in msgs:  # a failed connection is not a failed attempt: delivered on the first one
        assert [e.event for e in await events_of(services, m.id)] == ["accepted", "delivered"]


# -- retry limits --------------------------------------------------------------------------------


async def test_max_age_ends_in_failed(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    services.settings.delivery.max_age = 0.6
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.fail_first(1000, "450 4.2.0 mailbox busy")
    await delivery()
    msg = await submit(writer, account, ["busy@example.net"])
    await wait_states(services, msg.id, {"busy@example.net": "failed"})
    evs = await events_of(services, msg.id)
    assert evs[-1].event == events.FAILED and [e.event for e in evs].count("failed") == 1
    assert evs[-1].smtp_response == "450 4.2.0 mailbox busy"
    assert evs[-1].data["reason"] == "max_age"
    assert all(e.event == events.DEFERRED for e in evs[1:-1]) and len(evs) >= 3
    # The last attempt happened at the deadline, not before it.
    assert (
        evs[-1].created_at
        >= (await recipients_of(services, msg.id))["busy@example.net"].created_at + 0.6
    )
    assert await message_body(services, msg.id) is None


# -- connections, TLS, AUTH ------------------------------------------------------------------------


async def test_connections_are_reused_and_replaced(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    services.settings.delivery.messages_per_connection = 2
    account = await make_account(api)
    await route_to(api, sink.port)
    await delivery()
    for i in range(3):
        m = await submit(writer, account, [f"seq{i}@example.net"])
        await wait_states(services, m.id, {f"seq{i}@example.net": "delivered"})
    assert [m.connection for m in sink.messages] == [1, 1, 2]


async def test_idle_connections_are_closed(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    services.settings.delivery.idle_timeout = 0.2
    account = await make_account(api)
    await route_to(api, sink.port)
    service = await delivery()
    m = await submit(writer, account, ["idle@example.net"])
    await wait_states(services, m.id, {"idle@example.net": "delivered"})
    assert service.pool is not None
    await wait_until(lambda: not service.pool._pools, what="idle connection closed")
    m2 = await submit(writer, account, ["idle2@example.net"])
    await wait_states(services, m2.id, {"idle2@example.net": "delivered"})
    assert [x.connection for x in sink.messages] == [1, 2]


@pytest.mark.parametrize(("secure", "mode"), [("tls", "starttls"), ("ssl", "implicit")])
async def test_tls_and_auth_to_the_delivery_server(
    api: Api,
    services: Services,
    writer: QueueWriter,
    delivery: Any,
    make_sink: Any,
    secure: str,
    mode: str,
) -> None:
    sink = await make_sink(tls=mode, auth=("relay-user", "relay-pass"))
    services.settings.delivery.tls_ca_file = sink.ca_file
    account = await make_account(api)
    await route_to(api, sink.port, secure=secure, auth=("relay-user", "relay-pass"))
    await delivery()
    msg = await submit(writer, account, ["tls@example.net"])
    await wait_states(services, msg.id, {"tls@example.net": "delivered"})
    (received,) = sink.messages
    assert received.tls and received.auth_user == "relay-user"


async def test_untrusted_certificate_is_refused(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    sink = await make_sink(tls="starttls")  # self-signed, and no CA file configured
    account = await make_account(api)
    await route_to(api, sink.port, secure="tls")
    await delivery()
    msg = await submit(writer, account, ["v@example.net"])

    async def deferred() -> bool:
        return any(e.event == events.DEFERRED for e in await events_of(services, msg.id))

    await wait_until(deferred, what="a deferral")
    ev = next(e for e in await events_of(services, msg.id) if e.event == events.DEFERRED)
    assert "CERTIFICATE_VERIFY_FAILED" in ev.smtp_response and ev.data["stage"] == "connect"
    assert sink.messages == []


async def test_plain_server_is_never_upgraded(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    offers_tls = await make_sink(tls="starttls")  # offers STARTTLS and requires it for MAIL
    account = await make_account(api)
    await route_to(api, offers_tls.port, secure="false")
    await delivery()
    msg = await submit(writer, account, ["plain@example.net"])

    # "false" = plain: no opportunistic STARTTLS, so this server refuses the MAIL (a 5xx).
    await wait_states(services, msg.id, {"plain@example.net": "bounced"})
    ev = next(e for e in await events_of(services, msg.id) if e.event == events.BOUNCED)
    assert ev.smtp_code == 530 and ev.data["stage"] == "MAIL" and offers_tls.messages == []


async def test_verification_can_be_turned_off(
    api: Api, services: Services, writer: QueueWriter, delivery: Any, make_sink: Any
) -> None:
    services.settings.delivery.tls_verify = False
    implicit = await make_sink(tls="implicit")  # self-signed, no CA file
    account = await make_account(api)
    await route_to(api, implicit.port, secure="ssl")
    await delivery()
    msg = await submit(writer, account, ["unverified@example.net"])
    await wait_states(services, msg.id, {"unverified@example.net": "delivered"})
    assert implicit.messages[0].tls


# -- scheduled sending and per-recipient bodies ---------------------------------------------------


async def test_a_scheduled_message_goes_out_after_its_time_across_a_restart(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    first = await delivery()
    not_before = time.time() + 2
    msg = await submit(writer, account, ["later@example.net"], not_before=not_before)
    await first.stop(5, None)  # a restart: the schedule lives in the database only
    await delivery()
    await wait_states(services, msg.id, {"later@example.net": "delivered"})
    assert sink.delivered_to("later@example.net") == 1
    evs = await events_of(services, msg.id)
    assert [e.event for e in evs] == ["accepted", "delivered"]
    assert evs[0].created_at < not_before <= evs[1].created_at


async def test_max_age_of_a_scheduled_message_counts_from_its_time(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    services.settings.delivery.max_age = 0.6
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.fail_first(1000, "450 4.2.0 mailbox busy")
    await delivery()
    not_before = time.time() + 1.0  # later than acceptance + max_age
    msg = await submit(writer, account, ["busy@example.net"], not_before=not_before)
    await wait_states(services, msg.id, {"busy@example.net": "failed"})
    evs = [e for e in await events_of(services, msg.id) if e.event != events.ACCEPTED]
    assert evs[0].event == events.DEFERRED  # tried at its time, not failed unseen
    assert evs[-1].event == events.FAILED and evs[-1].created_at >= not_before + 0.6


async def test_each_variant_goes_in_its_own_transaction(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    await delivery()
    shared = body("shared")
    variants = {f"{n}@example.net": body(f"for {n}") for n in ("c", "d", "gone")}
    rcpts = ["a@example.net", "b@example.net", *variants]
    msg = await submit(writer, account, rcpts, data=shared, variants=variants)
    expected = dict.fromkeys(rcpts, "delivered") | {"gone@example.net": "bounced"}
    await wait_states(services, msg.id, expected)

    received = {tuple(m.rcpt_tos): m.data for m in sink.messages}
    assert received == {
        # Each recipient has its own return path (VERP), so its own transaction; those sharing
        # the message's body get the same bytes.
        ("a@example.net",): shared,
        ("b@example.net",): shared,
        ("c@example.net",): variants["c@example.net"],
        ("d@example.net",): variants["d@example.net"],
    }
    rows = await recipients_of(services, msg.id)
    assert {r.body for r in rows.values()} == {None}  # every recipient final: bodies dropped
    assert await message_body(services, msg.id) is None
    s = t.suppressions
    async with services.db.read() as conn:
        assert [r.email for r in (await conn.execute(select(s))).all()] == ["gone@example.net"]


# -- storage errors ------------------------------------------------------------------------------


async def test_a_storage_error_during_a_claim_is_retried_not_fatal(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    """The database fails under the claim (here: its table is gone for a while). On both
    backends the worker reports it and keeps claiming, soon (backing off from 0.5 s), not after
    its poll interval (600 s here, nothing else wakes it): the mail goes out once it is back."""
    services.settings.delivery.poll_interval = 600
    account = await make_account(api)
    await route_to(api, sink.port)
    msg = await submit(writer, account, ["patient@example.net"])
    claim_errors = metrics.STORAGE_ERRORS.labels(operation="claim")
    before = claim_errors._value.get()
    async with services.db.write() as conn:
        await conn.exec_driver_sql("ALTER TABLE recipients RENAME TO recipients_away")
    service = await delivery()
    try:
        await wait_until(lambda: claim_errors._value.get() >= before + 2, what="failed claims")
        assert service.error is None and service._claimer is not None
        assert not service._claimer.done()
    finally:
        async with services.db.write() as conn:
            await conn.exec_driver_sql("ALTER TABLE recipients_away RENAME TO recipients")
    await wait_states(services, msg.id, {"patient@example.net": "delivered"})
    assert service.error is None


async def test_a_storage_error_asking_for_the_next_scheduled_time_does_not_make_it_late(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    """The worker idles until the earliest scheduled time; when asking for it fails, it asks
    again soon, not after its poll interval (600 s here), which would make the message late."""
    services.settings.delivery.poll_interval = 600
    account = await make_account(api)
    await route_to(api, sink.port)
    service = await delivery()
    asked = service.queue.next_scheduled
    failures = 0

    async def failing_once(now: float) -> float | None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise StorageUnavailable("database is locked")
        return await asked(now)

    service.queue.next_scheduled = failing_once  # type: ignore[method-assign]
    not_before = time.time() + 2
    msg = await submit(writer, account, ["later@example.net"], not_before=not_before)
    await wait_states(services, msg.id, {"later@example.net": "delivered"}, timeout=30)
    (received,) = sink.messages
    assert failures == 1
    assert not_before <= received.received_at < not_before + 2


# -- leases, restarts, several nodes ----------------------------------------------------------


async def test_leases_exclude_others_until_they_expire(services: Services, api: Api) -> None:
    account = await make_account(api)
    w = QueueWriter(services.db)
    await w.start()
    try:
        msg = await submit(w, account, ["a@example.net", "b@example.net"])
    finally:
        await w.stop()
    store = open_backend(services.db, "test")
    now = time.time()
    crashed = await store.claim("crashed-node", 10, 30, now)
    assert sorted(c.rcpt for c in crashed) == ["a@example.net", "b@example.net"]
    assert await store.claim("other-node", 10, 30, now + 1) == []  # leased
    assert (await store.pending(now)).pending == 2
    again = await store.claim("other-node", 10, 30, now + 31)  # the lease ran out
    assert sorted(c.id for c in again) == sorted(c.id for c in crashed)
    rows = await recipients_of(services, msg.id)
    assert {r.lease_owner for r in rows.values()} == {"other-node"}
    assert await store.release("other-node") == 2
    rows = await recipients_of(services, msg.id)
    assert {(r.lease_owner, r.lease_until) for r in rows.values()} == {(None, None)}
    (loaded,) = await store.load(await store.claim("n", 10, 30, now))
    assert loaded.id == msg.id and len(loaded.recipients) == 2 and loaded.body == msg.body
    await store.close()


async def test_a_crashed_nodes_leases_are_reclaimed(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    msg = await submit(writer, account, ["orphan@example.net"])
    # A node claimed it and died: its lease runs 1 s.
    dead = open_backend(services.db, "dead-node")
    assert len(await dead.claim("dead-node", 10, 1.0)) == 1
    await dead.close()
    await delivery()
    await wait_states(services, msg.id, {"orphan@example.net": "delivered"})
    assert sink.delivered_to("orphan@example.net") == 1
    row = (await recipients_of(services, msg.id))["orphan@example.net"]
    assert row.lease_owner is None and row.attempts == 1


async def test_restart_loses_nothing_and_leaves_no_lease(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    services.settings.delivery.concurrency = 3
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.hold_data()  # deliveries stay mid-flight at DATA
    first = await delivery()
    msgs = [await submit(writer, account, [f"m{i}@example.net"]) for i in range(8)]
    await wait_until(lambda: sink.in_data >= 3, what="three deliveries mid-flight")
    await first.stop(0.1, None)  # shorter than the held deliveries: they are cancelled
    assert not first._inflight
    r = t.recipients
    async with services.db.read() as conn:
        leased = (await conn.execute(select(r.c.id).where(r.c.lease_owner.is_not(None)))).all()
    assert leased == []  # released, not left to expire
    for i, m in enumerate(msgs):  # cancelled or never started: still pending, not lost
        assert await states(services, m.id) == {f"m{i}@example.net": "queued"}
    sink.release_data()
    await delivery()
    for i, m in enumerate(msgs):
        await wait_states(services, m.id, {f"m{i}@example.net": "delivered"})
    for i in range(8):
        assert sink.delivered_to(f"m{i}@example.net") >= 1  # at least once, none lost
    async with services.db.read() as conn:
        leased = (await conn.execute(select(r.c.id).where(r.c.lease_owner.is_not(None)))).all()
    assert leased == []


async def test_graceful_stop_lets_deliveries_finish(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.hold_data()
    service = await delivery()
    msg = await submit(writer, account, ["finish@example.net"])
    await wait_until(lambda: sink.in_data == 1, what="delivery mid-flight")
    stopping = asyncio.create_task(service.stop(30, asyncio.Event()))
    await asyncio.sleep(0)
    sink.release_data()
    await stopping
    assert await states(services, msg.id) == {"finish@example.net": "delivered"}
    assert sink.delivered_to("finish@example.net") == 1


async def test_hurry_cuts_the_wait_short(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.hold_data()
    service = await delivery()
    msg = await submit(writer, account, ["hurry@example.net"])
    await wait_until(lambda: sink.in_data == 1, what="delivery mid-flight")
    hurry = asyncio.Event()
    stopping = asyncio.create_task(service.stop(600, hurry))
    hurry.set()
    await asyncio.wait_for(stopping, 30)  # not 600 s
    row = (await recipients_of(services, msg.id))["hurry@example.net"]
    assert row.state == "queued" and row.lease_owner is None


async def test_a_dying_side_task_stops_the_worker_loudly(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    service = await delivery()
    reaper = next(task for task in service._side if task.get_name() == "delivery-pool-reaper")
    reaper.cancel()
    await wait_until(lambda: service.error is not None, what="worker error")
    assert "delivery-pool-reaper" in str(service.error)
    # It stopped claiming (the shutdown ran on its own), and says so.
    claimer = service._claimer
    assert claimer is not None
    await wait_until(claimer.done, what="claim loop stopped")
    assert metrics.DELIVERY_WORKER_UP._value.get() == 0


# -- PostgreSQL: several nodes ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def node(tmp_path: Path, db_url: str, name: str, **env: str) -> AsyncIterator[Services]:
    """Another relay node (its own Services: pools, caches, bus) on the same database."""
    settings = make_settings(
        tmp_path / name, db_url, **{**FAST, "RELAY_SERVER_NODE_ID": name, **env}
    )
    async with running_node(settings) as built:
        yield built.services


async def setup_through_admin(services: Services, sink_port: int) -> Account:
    """An account and a delivery server for group 1, made through node ``services``' admin app."""
    import aiohttp

    from relay.admin.app import AdminServer

    admin = AdminServer(services, "127.0.0.1", 0)
    await admin.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{admin.port}", session)
            account = await make_account(api)
            await route_to(api, sink_port)
    finally:
        await admin.stop()
    return account


@pytest.mark.redis
async def test_a_bounce_invalidates_every_nodes_suppression_cache(
    tmp_path: Path, db_url: str, redis_url: str, make_sink: Any
) -> None:
    sink = await make_sink()
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    async with (
        node(tmp_path, db_url, "bouncer", RELAY_REDIS_URL=redis_url) as a,
        node(tmp_path, db_url, "smtp-only", RELAY_REDIS_URL=redis_url) as b,
    ):
        account = await setup_through_admin(a, sink.port)
        # Node B's SMTP side has cached "not suppressed".
        assert await b.directory.suppression(account.user_id, "gone@example.net") is None
        service = DeliveryService(a)
        await service.start()
        w = QueueWriter(a.db, on_commit=a.notify_enqueued)
        await w.start()
        try:
            msg = await submit(w, account, ["gone@example.net"])
            await wait_states(a, msg.id, {"gone@example.net": "bounced"})

            async def b_knows() -> bool:
                reason = await b.directory.suppression(account.user_id, "gone@example.net")
                return reason == "account suppression list"

            await wait_until(b_knows, what="node B's cache invalidated over Redis")
        finally:
            await w.stop()
            await service.stop(5, None)


@pytest.mark.postgres
async def test_concurrent_claims_never_overlap(tmp_path: Path, pg_url: str) -> None:
    async with node(tmp_path, pg_url, "a") as a:
        r, m = t.recipients, t.messages
        now = time.time()
        async with a.db.write() as conn:
            await conn.execute(
                m.insert(),
                [
                    {
                        "id": f"m{i}",
                        "user_id": 1,
                        "domain_id": 1,
                        "source": "smtp",
                        "mail_from": "s@example.com",
                        "size": 1,
                        "body": b"x",
                        "created_at": now,
                    }
                    for i in range(300)
                ],
            )
            await conn.execute(
                r.insert(),
                [
                    {
                        "message_id": f"m{i}",
                        "rcpt": f"r{i}@example.net",
                        "rcpt_domain": "example.net",
                        "state": "queued",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(300)
                ],
            )
        stores = [open_backend(a.db, f"owner{i}") for i in range(6)]
        batches = await asyncio.gather(
            *(s.claim(f"owner{i}", 60, 30) for i, s in enumerate(stores))
        )
        for s in stores:
            await s.close()
        ids = [c.id for batch in batches for c in batch]
        assert len(ids) == len(set(ids)) == 300  # all claimed, none twice


@pytest.mark.postgres
async def test_two_nodes_deliver_each_recipient_once(
    tmp_path: Path, pg_url: str, make_sink: Any
) -> None:
    sink = await make_sink()
    async with (
        node(tmp_path, pg_url, "node-a") as a,
        node(tmp_path, pg_url, "node-b", RELAY_DELIVERY_CONCURRENCY="4") as b,
    ):
        account = await setup_through_admin(a, sink.port)
        a.settings.delivery.concurrency = 4
        svc_a, svc_b = DeliveryService(a), DeliveryService(b)
        await svc_a.start()
        await svc_b.start()
        w = QueueWriter(a.db, on_commit=a.notify_enqueued)
        await w.start()
        try:
            msgs = await asyncio.gather(
                *(
                    submit(w, account, [f"n{i}@example.net", f"n{i}b@example.net"])
                    for i in range(30)
                )
            )
            for i, m in enumerate(msgs):
                await wait_states(
                    a, m.id, {f"n{i}@example.net": "delivered", f"n{i}b@example.net": "delivered"}
                )
        finally:
            await w.stop()
            await svc_a.stop(5, None)
            await svc_b.stop(5, None)
        for i in range(30):
            assert sink.delivered_to(f"n{i}@example.net") == 1
            assert sink.delivered_to(f"n{i}b@example.net") == 1
        e = t.events
        async with a.db.read() as conn:
            delivered = (
                await conn.execute(select(e.c.id).where(e.c.event == events.DELIVERED))
            ).all()
        assert len(delivered) == 60


@contextlib.asynccontextmanager
async def idle_second_node(
    tmp_path: Path, pg_url: str, sink_port: int
) -> AsyncIterator[tuple[Services, Account, QueueWriter]]:
    """Node A takes mail (its writer and an account routed to the sink); node B delivers and
    polls only once a minute, and its wake-up on connecting to LISTEN has been taken: B now
    sleeps for a minute unless something wakes it."""
    async with (
        node(tmp_path, pg_url, "ingest-node") as a,
        node(tmp_path, pg_url, "delivery-node", RELAY_DELIVERY_POLL_INTERVAL="60") as b,
    ):
        account = await setup_through_admin(a, sink_port)
        svc_b = DeliveryService(b)
        await svc_b.start()
        w = QueueWriter(a.db, on_commit=a.notify_enqueued)
        await w.start()
        try:
            await asyncio.wait_for(svc_b.listening.wait(), 30)
            await wait_until(lambda: not svc_b._wake.is_set(), what="B idle")
            yield a, account, w
        finally:
            await w.stop()
            await svc_b.stop(5, None)


@pytest.mark.postgres
async def test_notify_wakes_another_nodes_worker(
    tmp_path: Path, pg_url: str, make_sink: Any
) -> None:
    """Node B polls only once a minute: only LISTEN/NOTIFY can make it deliver quickly."""
    sink = await make_sink()
    async with idle_second_node(tmp_path, pg_url, sink.port) as (a, account, w):
        msg = await submit(w, account, ["wake@example.net"])
        await wait_states(a, msg.id, {"wake@example.net": "delivered"}, timeout=30)


@pytest.mark.postgres
async def test_another_nodes_scheduled_message_goes_out_at_its_time(
    tmp_path: Path, pg_url: str, make_sink: Any
) -> None:
    """Node B polls once a minute; A accepts a message scheduled 2 s ahead. B's NOTIFY wake-up
    finds nothing due, so only its timer for the earliest scheduled time delivers it on time."""
    sink = await make_sink()
    async with idle_second_node(tmp_path, pg_url, sink.port) as (a, account, w):
        not_before = time.time() + 2
        msg = await submit(w, account, ["later@example.net"], not_before=not_before)
        await wait_states(a, msg.id, {"later@example.net": "delivered"}, timeout=30)
        (received,) = sink.messages
        assert not_before <= received.received_at < not_before + 2


async def test_a_reply_with_a_nul_is_recorded_not_poisonous(
    api: Api, services: Services, sink: Sink, writer: QueueWriter, delivery: Any
) -> None:
    """Remote replies are stored as text: a NUL (PostgreSQL text refuses it) must not make the
    outcome batch fail over and over."""
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.rcpt_replies["odd@example.net"] = "550 5.7.1 no\x00pe"
    await delivery()
    msg = await submit(writer, account, ["odd@example.net", "fine@example.net"])
    await wait_states(
        services, msg.id, {"odd@example.net": "bounced", "fine@example.net": "delivered"}
    )
    row = (await recipients_of(services, msg.id))["odd@example.net"]
    assert row.last_response == "550 5.7.1 nope"


def test_storable_text() -> None:
    from relay.store.db import storable_text

    assert storable_text(None) is None
    assert storable_text("plain") == "plain"
    assert storable_text("a\x00b") == "ab"
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert storable_text(raw) == "caf\ufffd"
    assert storable_text("ünïcode ✓") == "ünïcode ✓"
