"""The whole path on one relay node: SMTP submission -> queue -> delivery -> downstream server.

What arrives downstream is byte for byte what the relay signed, and its DKIM signature verifies
against the domain's published key (served by the DNS stub on loopback).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import dkim
from sqlalchemy import select

from relay.store import schema as t
from tests.provision import route_to, send, wait_until
from tests.relayfix import start_relay, stop_relay
from tests.sink import Sink
from tests.test_dkim import stub_dnsfunc

MESSAGE = (
    b"From: App <app@example.com>\r\nTo: a@example.net, b@example.net\r\n"
    b"Subject: end to end\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n"
)


async def test_submitted_mail_arrives_signed_and_verifiable(
    tmp_path: Path, db_url: str, sink: Sink, dns_stub: Any
) -> None:
    running, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_DELIVERY_ENABLED="true",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
    )
    try:
        acct = await running.new_account()
        await route_to(running.api, sink.port, name="downstream")
        host, value = acct.dkim_record
        dns_stub.txt(host, value)

        message_id = await send(
            running.smtp_port, acct, ["a@example.net", "b@example.net"], MESSAGE
        )

        await sink.wait_for(lambda s: len([r for m in s.messages for r in m.rcpt_tos]) >= 2)
        # One transaction per recipient, each with its VERP return path (mta/returnpath.py).
        assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
            "a@example.net",
            "b@example.net",
        ]
        for received in sink.messages:
            assert received.mail_from.endswith("@mail.example.com")
            assert received.data.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
            assert await asyncio.to_thread(
                dkim.verify, received.data, dnsfunc=stub_dnsfunc(dns_stub.nameserver)
            )

        services = running.relay.services
        assert services is not None
        r = t.recipients

        async def all_delivered() -> bool:
            async with services.db.read() as conn:
                rows = (
                    await conn.execute(select(r.c.state).where(r.c.message_id == message_id))
                ).all()
            return sorted(x.state for x in rows) == ["delivered", "delivered"]

        await wait_until(all_delivered, what="both recipients delivered")
    finally:
        await stop_relay(running, session)
