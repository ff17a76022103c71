"""The MX listener, end to end on SQLite and PostgreSQL: mail really sent through the relay to
the sink (so its VERP return path is real), then reports in the shapes real MTAs send
(tests/mx_reports/: Postfix, Exim, Exchange Online, Gmail, qmail-style bare text; ARF from
Yahoo and Microsoft) delivered to that return path over SMTP; events, suppressions (the next
RCPT over submission gets 550 5.7.1), stored unusable reports, metrics, and hostile input."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import aiosmtplib
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from mta.bounces import replies as mx_replies
from mta.returnpath import VerpKeys
from relay.smtp import replies
from relay.store import schema as t
from relay.store.repos import bounces as repo
from tests.bouncefix import (
    keys_of,
    rcpt_reply,
    route_to,
    services_of,
    start_delivering,
    submit,
)
from tests.conftest import free_port
from tests.provision import wait_until
from tests.relayfix import Account, RunningRelay, stop_relay
from tests.sink import Sink
from tests.smtpclient import RawSMTP

REPORTS = Path(__file__).parent / "mx_reports"
DATE = "Fri, 27 Nov 2026 12:00:00 +0000"


@dataclass
class Sent:
    message_id: str
    rcpt: str
    verp: str


@dataclass
class Mx:
    running: RunningRelay
    acct: Account
    sink: Sink
    port: int
    keys: VerpKeys

    async def send(self, rcpt: str) -> Sent:
        """A message really sent through the relay; its return path as the sink saw it."""
        message_id = await submit(self.running, self.acct, [rcpt])

        def arrived(sink: Sink) -> bool:
            return any(rcpt in m.rcpt_tos for m in sink.messages)

        await self.sink.wait_for(arrived)
        (verp,) = [m.mail_from for m in self.sink.messages if rcpt in m.rcpt_tos]
        return Sent(message_id, rcpt, verp)


def report(name: str, sent: Sent, **extra: str) -> bytes:
    local, _, domain = sent.rcpt.partition("@")
    values = {
        "verp": sent.verp,
        "rcpt": sent.rcpt,
        "rcpt_local": local,
        "rcpt_domain": domain,
        "date": DATE,
        "subject": "hello",
        "message_id": f"<{sent.message_id}@relay.test>",
        **extra,
    }
    text = Template((REPORTS / f"{name}.eml").read_text()).substitute(values)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


async def to_mx(port: int, rcpts: list[str], data: bytes, sender: str = "") -> str:
    """Deliver a report as an MTA would (MAIL FROM:<> for DSNs); the DATA reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await client.connect()
    try:
        errors, reply = await client.sendmail(sender, rcpts, data)
    finally:
        await client.quit()
    assert errors == {}, errors
    return reply


def count(result: str) -> float:
    return REGISTRY.get_sample_value("relay_mx_reports_total", {"result": result}) or 0.0


async def events_of(mx: Mx, message_id: str) -> list[Any]:
    e = t.events
    async with services_of(mx.running).db.read() as conn:
        rows = await conn.execute(
            select(e.c.event, e.c.recipient, e.c.smtp_code, e.c.smtp_response, e.c.data)
            .where(e.c.message_id == message_id, e.c.event.not_in(("accepted", "delivered")))
            .order_by(e.c.id)
        )
        return list(rows.all())


async def stored(mx: Mx) -> list[Any]:
    m = t.mx_reports
    async with services_of(mx.running).db.read() as conn:
        return list((await conn.execute(select(m).order_by(m.c.id))).all())


@pytest.fixture
async def make_mx(tmp_path: Path, db_url: str, sink: Sink) -> AsyncIterator[Any]:
    started: list[tuple[RunningRelay, Any]] = []

    async def start(**env: str) -> Mx:
        port = free_port()
        running, session = await start_delivering(
            tmp_path, db_url, RELAY_MX_LISTEN=f"127.0.0.1:{port}", **env
        )
        started.append((running, session))
        acct = await running.new_account()
        await route_to(running, sink)
        return Mx(running, acct, sink, port, await keys_of(running))

    yield start
    for running, session in started:
        await stop_relay(running, session)


# What each report must record: (fixture, event, category, status, suppression source).
SHAPES = [
    ("postfix_failed", "bounced", "bad-mailbox", "5.1.1", "bounce"),
    ("exchange_online", "bounced", "bad-mailbox", "5.1.10", "bounce"),
    ("gmail_dsn", "bounced", "bad-mailbox", "5.1.1", "bounce"),
    ("exim_text", "bounced", "inactive-mailbox", "5.2.1", "bounce"),
    ("bare_text", "bounced", "bad-mailbox", "5.1.1", "bounce"),
    ("gmail_quota", "bounced", "quota-issues", "5.2.2", None),
    ("postfix_delayed", "deferred", "no-answer-from-host", "4.4.1", None),
    ("yahoo_arf", "complained", None, None, "complaint"),
    ("microsoft_arf", "complained", None, None, "complaint"),
    ("microsoft_jmrp_legacy", "complained", None, None, "complaint"),
]


async def test_reports_in_real_mta_shapes_record_events_and_suppressions(make_mx: Any) -> None:
    mx = await make_mx()
    before = {r: count(r) for r in ("bounced", "deferred", "complained")}
    sent = {name: await mx.send(f"{name.replace('_', '-')}@example.net") for name, *_ in SHAPES}
    for name, *_ in SHAPES:
        reply = await to_mx(mx.port, [sent[name].verp], report(name, sent[name]))
        assert reply.startswith("2.0.0"), (name, reply)

    s = t.suppressions
    async with services_of(mx.running).db.read() as conn:
        suppressions = {
            r.email: r.source for r in (await conn.execute(select(s.c.email, s.c.source))).all()
        }
    for name, event, category, status, source in SHAPES:
        got = await events_of(mx, sent[name].message_id)
        names = [e.event for e in got]
        assert names == [event, "suppressed"] if source else [event], (name, names)
        first = got[0]
        assert first.recipient == sent[name].rcpt, name
        assert first.data["source"] == "mx", name
        if category is not None:
            assert first.data["BounceCategory"] == category, (name, first.data)
            assert first.data["DSNStatus"] == status, (name, first.data)
            assert first.data["DSNDiag"] and first.smtp_response == first.data["DSNDiag"], name
        else:
            assert first.data["FeedbackType"] == "abuse", (name, first.data)
        assert suppressions.get(sent[name].rcpt) == source, name
        # The next RCPT to the address over SMTP submission.
        reply = await rcpt_reply(mx.running, mx.acct, sent[name].rcpt)
        if source:
            assert reply == replies.RCPT_SUPPRESSED, (name, reply)
        else:
            assert reply.startswith("250 "), (name, reply)
    assert count("bounced") - before["bounced"] == 6
    assert count("deferred") - before["deferred"] == 1
    assert count("complained") - before["complained"] == 3


async def test_the_same_report_twice_records_once(make_mx: Any) -> None:
    mx = await make_mx()
    sent = await mx.send("twice@example.net")
    duplicates = count("duplicate")
    data = report("postfix_failed", sent)
    for _ in range(2):
        assert (await to_mx(mx.port, [sent.verp], data)).startswith("2.0.0")
    assert [e.event for e in await events_of(mx, sent.message_id)] == ["bounced", "suppressed"]
    assert count("duplicate") - duplicates == 1
    # A later, different report about the same recipient is news.
    later = report("postfix_delayed", sent)
    assert (await to_mx(mx.port, [sent.verp], later)).startswith("2.0.0")
    assert [e.event for e in await events_of(mx, sent.message_id)][-1] == "deferred"


async def test_unusable_reports_are_stored_counted_and_never_fatal(make_mx: Any) -> None:
    mx = await make_mx()
    sent = await mx.send("kept@example.net")
    host = sent.verp.rpartition("@")[2]
    counts = {r: count(r) for r in ("unparsed", "unmatched", "ignored")}
    unknown_message = mx.keys.address(str(uuid.uuid4()), "kept@example.net", host)
    other_recipient = mx.keys.address(sent.message_id, "stranger@example.net", host)
    cases = [
        (sent.verp, report("not_a_report", sent), "unparsed"),
        (sent.verp, report("broken_dsn", sent), "unparsed"),
        (sent.verp, b"\x00\xff\xfe garbage \r\n\r\n\x80\x81" * 50, "unparsed"),
        (
            sent.verp,
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
            b"--x\r\nContent-Type: message/delivery-status\r\n\r\n",
            "unparsed",
        ),
        (unknown_message, report("postfix_failed", sent), "unmatched"),
        (other_recipient, report("postfix_failed", sent), "unmatched"),
        (sent.verp, report("out_of_office", sent), "ignored"),
        (sent.verp, report("dmarc_failure", sent), "ignored"),
    ]
    for rcpt, data, _result in cases:
        assert (await to_mx(mx.port, [rcpt], data)).startswith("2.0.0")
    assert await events_of(mx, sent.message_id) == []
    rows = await stored(mx)
    assert [r.result for r in rows] == ["unparsed"] * 4 + ["unmatched"] * 2
    assert [r.reason for r in rows[4:]] == ["unknown message", "recipient not in message"]
    assert rows[0].rcpt == sent.verp and rows[0].message_id == sent.message_id
    assert rows[0].content == cases[0][1] and rows[0].size == len(cases[0][1])
    assert rows[4].message_id != sent.message_id
    for result, expected in (("unparsed", 4), ("unmatched", 2), ("ignored", 2)):
        assert count(result) - counts[result] == expected, result
    # Still answering, and a good report after all that is recorded.
    assert (await to_mx(mx.port, [sent.verp], report("gmail_dsn", sent))).startswith("2.0.0")
    assert [e.event for e in await events_of(mx, sent.message_id)] == ["bounced", "suppressed"]


async def test_stored_reports_are_bounded_in_number_and_age(make_mx: Any) -> None:
    mx = await make_mx(RELAY_MX_REPORT_MAX_STORED="3", RELAY_MX_REPORT_RETENTION_DAYS="1")
    sent = await mx.send("bounded@example.net")
    for i in range(5):
        data = report("not_a_report", sent).replace(b"hello there", f"note {i}".encode())
        assert (await to_mx(mx.port, [sent.verp], data)).startswith("2.0.0")
    services = services_of(mx.running)
    async with services.db.write() as conn:
        await repo.store_report(
            conn,
            created_at=0.0,
            result="unparsed",
            client_ip="",
            size=1,
            content=b"x",
        )
    processor = mx.running.relay.mx.processor
    assert await processor.prune() >= 3
    rows = await stored(mx)
    assert len(rows) == 3 and all(b"note" in r.content for r in rows)
    assert [r.content.split(b"note ")[1][:1] for r in rows] == [b"2", b"3", b"4"]


async def test_rcpt_only_for_return_paths_with_valid_tokens(make_mx: Any) -> None:
    mx = await make_mx()
    sent = await mx.send("someone@example.net")
    local, _, host = sent.verp.partition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    refused = [
        f"postmaster@{host}",
        f"abuse@{host}",
        f"{flipped}@{host}",  # forged: the MAC does not match
        f"{local}@mail.other.example",  # a real token at another host
        f"{local}@{host}.evil.example",
        "someone@example.net",  # relaying
        f"{local[:-3]}@{host}",
    ]
    c, greeting = await RawSMTP.connect(mx.port)
    assert greeting.startswith("220 ")
    ehlo = await c.cmd("EHLO reporter.example")
    assert "STARTTLS" in ehlo and "ENHANCEDSTATUSCODES" in ehlo and "AUTH" not in ehlo
    assert await c.cmd("AUTH PLAIN AGFAYg==") == mx_replies.NO_AUTH
    assert await c.cmd("MAIL FROM:<>") == mx_replies.SENDER_OK
    for address in refused:
        assert await c.cmd(f"RCPT TO:<{address}>") == mx_replies.NOT_A_RETURN_PATH, address
    assert await c.cmd(f"RCPT TO:<{sent.verp.upper()}>") == mx_replies.RECIPIENT_OK
    assert await c.cmd("RSET") == "250 2.0.0 OK"
    # Without any accepted recipient there is nothing to send data to.
    await c.cmd("MAIL FROM:<>")
    await c.cmd(f"RCPT TO:<postmaster@{host}>")
    assert (await c.cmd("DATA")).startswith("503 5.5.1")
    assert (await c.cmd("STARTTLS")).startswith("220 ")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    await c.writer.start_tls(ctx)
    ehlo = await c.cmd("EHLO reporter.example")
    assert "AUTH" not in ehlo and "STARTTLS" not in ehlo
    assert await c.cmd("AUTH LOGIN") == mx_replies.NO_AUTH
    await c.close()
    assert len(mx.sink.messages) == 1  # nothing relayed
    rejected = REGISTRY.get_sample_value(
        "relay_mx_rejections_total", {"stage": "rcpt", "code": "550"}
    )
    assert rejected is not None and rejected >= len(refused)


async def test_hostile_input(make_mx: Any) -> None:
    mx = await make_mx(
        RELAY_MX_MAX_MESSAGE_SIZE="20000",
        RELAY_MX_MAX_CONNECTIONS_PER_IP="3",
        RELAY_MX_COMMAND_TIMEOUT="2",
    )
    sent = await mx.send("hostile@example.net")
    c, _ = await RawSMTP.connect(mx.port)
    ehlo = await c.cmd("EHLO reporter.example")
    assert "SIZE 20000" in ehlo
    assert await c.cmd("MAIL FROM:<> SIZE=20001") == replies.TOO_BIG
    # Oversize DATA: refused after all of it was read, and the connection stays in sync.
    assert await c.cmd("MAIL FROM:<>") == mx_replies.SENDER_OK
    assert await c.cmd(f"RCPT TO:<{sent.verp}>") == mx_replies.RECIPIENT_OK
    assert (await c.cmd("DATA")).startswith("354")
    await c.send(b"Subject: big\r\n\r\n" + (b"y" * 500 + b"\r\n") * 60 + b".\r\n")
    assert await c.reply() == replies.TOO_BIG
    # A line longer than RFC 5322's 998.
    assert await c.cmd("MAIL FROM:<>") == mx_replies.SENDER_OK
    assert await c.cmd(f"RCPT TO:<{sent.verp}>") == mx_replies.RECIPIENT_OK
    assert (await c.cmd("DATA")).startswith("354")
    await c.send(b"Subject: long\r\n\r\n" + b"z" * 2000 + b"\r\n.\r\n")
    assert await c.reply() == replies.LINE_TOO_LONG.format(detail=998)
    # Too many recipients in one transaction.
    assert await c.cmd("MAIL FROM:<>") == mx_replies.SENDER_OK
    for _ in range(20):
        assert await c.cmd(f"RCPT TO:<{sent.verp}>") == mx_replies.RECIPIENT_OK
    assert await c.cmd(f"RCPT TO:<{sent.verp}>") == replies.TOO_MANY_RCPTS
    assert await c.cmd("RSET") == "250 2.0.0 OK"
    # A command line too long for SMTP (RFC 5321 4.5.3.1.4: 512 octets).
    assert (await c.cmd("NOOP " + "n" * 2000)).startswith("500")
    # Connection caps: 3 per address, the 4th is told to come back later.
    others = [await RawSMTP.connect(mx.port) for _ in range(2)]
    extra, greeting = await RawSMTP.connect(mx.port)
    assert greeting == replies.TOO_MANY_CONNECTIONS
    assert await extra.closed()
    for other, _ in others:
        await other.close()
    # Idle connections are closed by the command timeout.
    assert await _closed(c)
    assert await events_of(mx, sent.message_id) == []


async def _closed(c: RawSMTP, timeout: float = 30.0) -> bool:
    async def gone() -> bool:
        try:
            data = await asyncio.wait_for(c.reader.read(4096), 0.5)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return data == b"" or data.startswith(b"421")

    await wait_until(gone, timeout=timeout, what="idle MX connection closed")
    return True


async def test_listener_off_by_default_and_config_checked(tmp_path: Path, db_url: str) -> None:
    from relay import config

    running, session = await start_delivering(tmp_path, db_url)
    try:
        assert running.relay.mx is None
    finally:
        await stop_relay(running, session)
    with pytest.raises(config.ConfigError) as err:
        config.load(
            None,
            env={"RELAY_MX_LISTEN": "nohost", "RELAY_SECURITY_RETURN_PATH_SECRET": "short"},
        )
    assert "mx.listen" in str(err.value) and "return_path_secret" in str(err.value)


async def test_feedback_address_reports_are_matched_by_the_return_path_they_quote(
    make_mx: Any,
) -> None:
    fbl = "fbl@bounce.operator.test"
    mx = await make_mx(RELAY_MX_FEEDBACK_ADDRESSES=fbl)
    yahoo = await mx.send("yahoo-fbl@example.net")
    jmrp = await mx.send("jmrp-fbl@example.net")
    dsn = await mx.send("dsn-fbl@example.net")
    c, _ = await RawSMTP.connect(mx.port)
    await c.cmd("EHLO feedback.example")
    await c.cmd("MAIL FROM:<>")
    assert await c.cmd("RCPT TO:<FBL@Bounce.Operator.TEST>") == mx_replies.RECIPIENT_OK
    assert await c.cmd("RCPT TO:<abuse@bounce.operator.test>") == mx_replies.NOT_A_RETURN_PATH
    await c.close()
    # Yahoo quotes it as Original-Mail-From; the older JMRP shape only in the reported
    # message's Return-Path; a DSN in the returned headers.
    for sent, name in (
        (yahoo, "yahoo_arf"),
        (jmrp, "microsoft_jmrp_legacy"),
        (dsn, "postfix_failed"),
    ):
        assert (await to_mx(mx.port, [fbl], report(name, sent))).startswith("2.0.0"), name
    assert [e.event for e in await events_of(mx, yahoo.message_id)] == ["complained", "suppressed"]
    assert [e.event for e in await events_of(mx, jmrp.message_id)] == ["complained", "suppressed"]
    assert [e.event for e in await events_of(mx, dsn.message_id)] == ["bounced", "suppressed"]
    # Without a return path in it, a report to the feedback address is kept for a look.
    anonymous = report("yahoo_arf", yahoo).replace(yahoo.verp.encode(), b"someone@example.com")
    assert (await to_mx(mx.port, [fbl], anonymous)).startswith("2.0.0")
    rows = await stored(mx)
    assert [(r.result, r.reason, r.rcpt, r.message_id) for r in rows] == [
        ("unmatched", "no return path in report", fbl, None)
    ]
