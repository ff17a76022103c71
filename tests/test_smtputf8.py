"""Internationalized mail on the submission listener (RFC 6531, RFC 6532, RFC 6152).

SMTPUTF8 and 8BITMIME are offered; a transaction that declares SMTPUTF8 may use UTF-8 local
parts and U-label domains (kept as A-labels), is signed and queued like any other, and reaches
a delivery server that offers SMTPUTF8 intact. To a delivery server without it, a UTF-8 mailbox
bounces with 553 5.6.7 instead of going out mangled.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import idna
from sqlalchemy import select

from relay.smtp import replies
from relay.store import schema as t
from tests.provision import route_to, wait_until
from tests.relayfix import RunningRelay, start_relay, stop_relay
from tests.sink import Sink
from tests.test_dkim import stub_dnsfunc

SENDER = "jörg@example.com"
RCPT_LOCAL = "用户@例子.广告"
RCPT_LOCAL_STORED = "用户@" + idna.encode("例子.广告", uts46=True).decode()
RCPT_IDN_ONLY = "zoe@bücher.example"
RCPT_IDN_ONLY_STORED = "zoe@xn--bcher-kva.example"
MESSAGE = (
    "From: Jörg Müller <jörg@example.com>\r\nTo: 用户@例子.广告, zoe@bücher.example\r\n"
    "Subject: Grüße aus Köln\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Schöne Grüße, 你好\r\n"
).encode()


async def client_for(running: RunningRelay, username: str, password: str) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
    await client.connect()
    await client.login(username, password)
    return client


async def states(running: RunningRelay, message_id: str) -> dict[str, tuple[str, Any, Any]]:
    services = running.relay.services
    assert services is not None
    r = t.recipients
    async with services.db.read() as conn:
        rows = (
            await conn.execute(
                select(r.c.rcpt, r.c.state, r.c.last_code, r.c.last_response).where(
                    r.c.message_id == message_id
                )
            )
        ).all()
    return {row.rcpt: (row.state, row.last_code, row.last_response) for row in rows}


async def test_utf8_mail_is_offered_signed_queued_and_delivered(
    tmp_path: Path, db_url: str, make_sink: Any, dns_stub: Any
) -> None:
    sink: Sink = await make_sink()
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

        client = await client_for(running, acct.username, acct.password)
        assert client.supports_extension("smtputf8") and client.supports_extension("8bitmime")
        errors, reply = await client.sendmail(
            SENDER, [RCPT_LOCAL, RCPT_IDN_ONLY], MESSAGE,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )  # fmt: skip
        await client.quit()
        assert errors == {} and reply.startswith("2.0.0 Ok: queued as "), (errors, reply)
        message_id = reply.rsplit(" ", 1)[1]

        await sink.wait_for(lambda s: len([r for m in s.messages for r in m.rcpt_tos]) >= 2)
        got = sorted(r for m in sink.messages for r in m.rcpt_tos)
        assert got == sorted([RCPT_LOCAL_STORED, RCPT_IDN_ONLY_STORED])
        for received in sink.messages:
            # The headers and body arrive as submitted (8 bit, UTF-8), under a signature that
            # verifies.
            assert received.data.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
            assert "Subject: Grüße aus Köln".encode() in received.data
            assert await asyncio.to_thread(
                dkim.verify, received.data, dnsfunc=stub_dnsfunc(dns_stub.nameserver)
            )

        async def delivered() -> bool:
            found = await states(running, message_id)
            return {state for state, _, _ in found.values()} == {"delivered"}

        await wait_until(delivered, what="both recipients delivered")
        assert set(await states(running, message_id)) == {RCPT_LOCAL_STORED, RCPT_IDN_ONLY_STORED}
    finally:
        await stop_relay(running, session)


async def test_non_ascii_needs_smtputf8_and_utf8(tmp_path: Path, db_url: str) -> None:
    running, session = await start_relay(tmp_path, db_url)
    try:
        acct = await running.new_account()
        client = await client_for(running, acct.username, acct.password)
        # RFC 6531 3.4: a non-ASCII address without SMTPUTF8 on MAIL.
        reply = await client.execute_command("MAIL FROM:<jörg@example.com>".encode())
        assert (reply.code, reply.message) == (553, replies.NEEDS_SMTPUTF8[4:])
        reply = await client.execute_command(b"MAIL FROM:<app@example.com>")
        assert reply.code == 250
        reply = await client.execute_command("RCPT TO:<zoë@example.net>".encode())
        assert (reply.code, reply.message) == (553, replies.NEEDS_SMTPUTF8[4:])
        await client.execute_command(b"RSET")
        # With SMTPUTF8: bytes that are not UTF-8 are no address; nor is a sender outside the
        # domain, in any script.
        reply = await client.execute_command(b"MAIL FROM:<app@example.com> SMTPUTF8")
        assert reply.code == 250
        reply = await client.execute_command(b"RCPT TO:<z\xff\xfe@example.net>")
        assert (reply.code, reply.message) == (501, replies.RCPT_BAD_SYNTAX[4:])
        reply = await client.execute_command("RCPT TO:<zoë@example.net>".encode())
        assert reply.code == 250
        await client.execute_command(b"RSET")
        reply = await client.execute_command("MAIL FROM:<jörg@exämple.com> SMTPUTF8".encode())
        assert reply.code == 553, reply
        # The EHLO name stays ASCII (it goes into the Received header); AUTH that is not
        # base64 is still just that.
        reply = await client.execute_command("EHLO bücher.example".encode())
        assert (reply.code, reply.message) == (501, replies.EHLO_BAD[4:])
        reply = await client.execute_command(b"HELO b\xff.example")
        assert (reply.code, reply.message) == (501, replies.EHLO_BAD[4:])
        await client.quit()
        fresh = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
        await fresh.connect()
        await fresh.ehlo()
        reply = await fresh.execute_command("AUTH PLAIN ü".encode())
        assert (reply.code, reply.message) == (501, replies.AUTH_BAD_BASE64[4:])
        await fresh.quit()
    finally:
        await stop_relay(running, session)


async def test_delivery_server_without_smtputf8_bounces_with_553_5_6_7(
    tmp_path: Path, db_url: str, make_sink: Any
) -> None:
    old: Sink = await make_sink(smtputf8=False)
    running, session = await start_relay(
        tmp_path, db_url, RELAY_DELIVERY_ENABLED="true", RELAY_DELIVERY_POLL_INTERVAL="0.2"
    )
    try:
        acct = await running.new_account()
        await route_to(running.api, old.port, name="downstream")
        client = await client_for(running, acct.username, acct.password)
        errors, reply = await client.sendmail(
            SENDER, [RCPT_LOCAL, RCPT_IDN_ONLY], MESSAGE,
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )  # fmt: skip
        await client.quit()
        assert errors == {}, errors
        message_id = reply.rsplit(" ", 1)[1]

        async def bounced() -> bool:
            found = await states(running, message_id)
            return all(state != "queued" for state, _, _ in found.values()) and bool(found)

        await wait_until(bounced, what="the outcome")
        found = await states(running, message_id)
        # The envelope sender downstream is the VERP return path (ASCII). The UTF-8 mailbox
        # cannot be written to this server: it bounces with the RFC 6531 code, never mangled.
        # The IDN domain went as A-labels, which every server takes.
        assert {rcpt: (state, code) for rcpt, (state, code, _) in found.items()} == {
            RCPT_LOCAL_STORED: ("bounced", 553),
            RCPT_IDN_ONLY_STORED: ("delivered", 250),
        }
        assert "5.6.7" in (found[RCPT_LOCAL_STORED][2] or "")
        assert [m.rcpt_tos for m in old.messages] == [[RCPT_IDN_ONLY_STORED]]
    finally:
        await stop_relay(running, session)
