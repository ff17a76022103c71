"""SMTP submission end to end: real relay on loopback, real clients, SQLite and PostgreSQL.

Every reply of the relay's reply table (docs/smtp.md) is provoked here for real, and compared
whole with its constant in relay.smtp.replies (aiosmtpd's own replies with aiosmtpd's
testing.statuscodes, as the relay rewrites them), so a wrong check whose reply merely shares a
code with the right one fails.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from shutil import which
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.testing.statuscodes import SMTP_STATUS_CODES as S
from aiosmtpd.testing.statuscodes import StatusCode
from sqlalchemy import select, text, update

from relay.directory import Topics
from relay.smtp import replies
from relay.store import schema as t
from tests.provision import wait_until
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay
from tests.smtpclient import RawSMTP


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRelay]:
    r, session = await start_relay(tmp_path, db_url)
    yield r
    await stop_relay(r, session)


@pytest.fixture
async def account(running: RunningRelay) -> Account:
    return await running.new_account()


def msg(
    frm: str = "app@example.com",
    to: str = "rcpt@example.net",
    body: str = "Hello.\r\n",
    extra: str = "",
) -> bytes:
    return (f"From: App <{frm}>\r\nTo: {to}\r\nSubject: test\r\n{extra}\r\n{body}").encode()


def aio(status: StatusCode) -> str:
    """One of aiosmtpd's own replies, as the relay sends it (with an enhanced code)."""
    return replies.enhanced(status.to_str())


def queued_id(reply: str) -> str:
    """The queue id of a whole "250 2.0.0 Ok: queued as <id>" reply."""
    queue_id = reply.rsplit(" ", 1)[-1]
    assert reply == replies.QUEUED.format(id=queue_id), reply
    assert len(queue_id) == 36, reply
    return queue_id


async def session(running: RunningRelay, acct: Account) -> RawSMTP:
    c, greeting = await RawSMTP.connect(running.smtp_port)
    assert greeting == f"220 {running.settings.hostname} relay ESMTP"
    ehlo = (await c.cmd("EHLO client.test")).split("\n")
    assert ehlo[0] == f"250-{running.settings.hostname}"
    assert replies.EHLO_PIPELINING in ehlo and replies.EHLO_ENHANCED_CODES in ehlo
    assert await c.login(acct.username, acct.password) == replies.AUTH_OK
    return c


async def transaction(c: RawSMTP, frm: str, rcpts: list[str], data: bytes) -> list[str]:
    out = [await c.cmd(f"MAIL FROM:<{frm}>")]
    out += [await c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    if replies.RCPT_OK not in out[1:]:
        return out
    out.append(await c.cmd("DATA"))
    assert out[-1] == replies.DATA_GO_AHEAD
    await c.send(data + b".\r\n")
    out.append(await c.reply())
    return out


async def rows(running: RunningRelay, table: Any) -> list[Any]:
    assert running.relay.services is not None
    async with running.relay.services.db.read() as conn:
        return list((await conn.execute(select(table))).all())


async def set_user(running: RunningRelay, user_id: int, **values: Any) -> None:
    services = running.relay.services
    assert services is not None
    async with services.db.write() as conn:
        await conn.execute(update(t.users).where(t.users.c.id == user_id).values(**values))
    await services.bus.publish(Topics.USER, user_id)


# --- accepted mail -------------------------------------------------------------------------


async def test_accepts_with_smtplib_and_queues_durably(
    running: RunningRelay, account: Account
) -> None:
    def send() -> tuple[dict[str, Any], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=10) as c:
            c.ehlo("client.test")
            c.login(account.username, account.password)
            refused = c.sendmail("app@example.com", ["a@example.net", "b@example.org"], msg())
            return refused, c.noop()

    refused, _ = await asyncio.to_thread(send)
    assert refused == {}
    messages = await rows(running, t.messages)
    assert len(messages) == 1
    m = messages[0]
    assert m.mail_from == "app@example.com" and m.source == "smtp" and m.subject == "test"
    body = m.body
    assert body.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;")
    assert (
        b"\r\nReceived: from client.test ([127.0.0.1])\r\n\tby relay.test (relay) with ESMTPA"
        in body
    )
    assert f"Message-ID: <{m.id}@relay.test>".encode() in body
    assert b"\r\nDate: " in body
    recipients = await rows(running, t.recipients)
    assert sorted(r.rcpt for r in recipients) == ["a@example.net", "b@example.org"]
    assert {r.state for r in recipients} == {"queued"}
    events = await rows(running, t.events)
    assert sorted((e.event, e.recipient) for e in events) == [
        ("accepted", "a@example.net"),
        ("accepted", "b@example.org"),
    ]


async def test_queued_reply_names_the_message(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    out = await transaction(c, "app@example.com", ["r@example.net"], msg())
    assert out[:2] == [replies.SENDER_OK, replies.RCPT_OK]
    queue_id = queued_id(out[-1])
    assert [m.id for m in await rows(running, t.messages)] == [queue_id]
    await c.close()


async def test_aiosmtplib_over_starttls_and_implicit_tls(
    running: RunningRelay, account: Account
) -> None:
    m = EmailMessage()
    m["From"] = "app@example.com"
    m["To"] = "to@example.net"
    m["Subject"] = "tls"
    m.set_content("over TLS")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    await aiosmtplib.send(
        m,
        hostname="127.0.0.1",
        port=running.smtp_port,
        start_tls=True,
        tls_context=ctx,
        username=account.username,
        password=account.password,
    )
    await aiosmtplib.send(
        m,
        hostname="127.0.0.1",
        port=running.smtps_port,
        use_tls=True,
        tls_context=ctx,
        username=account.username,
        password=account.password,
    )
    bodies = [r.body for r in await rows(running, t.messages)]
    assert len(bodies) == 2
    assert all(b"with ESMTPSA (TLSv1." in b for b in bodies)


@pytest.mark.skipif(which("swaks") is None, reason="swaks not installed (apt-get install swaks)")
async def test_swaks(running: RunningRelay, account: Account) -> None:
    cmd = [
        "swaks",
        "--server",
        f"127.0.0.1:{running.smtp_port}",
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        account.username,
        "--auth-password",
        account.password,
        "--from",
        "app@example.com",
        "--to",
        "swaks@example.net",
        "--h-From",
        "<app@example.com>",
        "--timeout",
        "15",
    ]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<~  250 2.0.0 Ok: queued as" in proc.stdout
    assert [r.rcpt for r in await rows(running, t.recipients)] == ["swaks@example.net"]


# --- AUTH ------------------------------------------------------------------------------------


async def test_auth_failures(running: RunningRelay, account: Account) -> None:
    c, _ = await RawSMTP.connect(running.smtp_port)
    await c.cmd("EHLO client.test")
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.AUTH_REQUIRED
    assert await c.login(account.username, "wrong") == replies.AUTH_INVALID
    assert await c.login("nobody", account.password) == replies.AUTH_INVALID
    # AUTH LOGIN, interactive, with a wrong password: the third failure closes the connection.
    assert await c.cmd("AUTH LOGIN") == S.S334_AUTH_USERNAME.to_str()
    assert await c.cmd("bm9ib2R5") == S.S334_AUTH_PASSWORD.to_str()
    assert await c.cmd("d3Jvbmc=") == replies.AUTH_TOO_MANY
    assert await c.closed()


async def test_auth_login_success(running: RunningRelay, account: Account) -> None:
    import base64

    c, _ = await RawSMTP.connect(running.smtp_port)
    await c.cmd("EHLO client.test")
    assert (
        await c.cmd("AUTH LOGIN " + base64.b64encode(account.username.encode()).decode())
        == S.S334_AUTH_PASSWORD.to_str()
    )
    assert await c.cmd(base64.b64encode(account.password.encode()).decode()) == replies.AUTH_OK
    # Undecodable or malformed AUTH data.
    d, _ = await RawSMTP.connect(running.smtp_port)
    await d.cmd("EHLO client.test")
    assert await d.cmd("AUTH PLAIN !!!") == replies.AUTH_BAD_BASE64
    assert await d.cmd("AUTH LOGIN !!!") == replies.AUTH_BAD_BASE64
    no_nul = base64.b64encode(b"user-and-password").decode()
    assert await d.cmd(f"AUTH PLAIN {no_nul}") == replies.AUTH_BAD_PLAIN
    for x in (c, d):
        await x.close()


async def test_auth_requires_tls_outside_plaintext_networks(tmp_path: Path, db_url: str) -> None:
    running, http = await start_relay(
        tmp_path, db_url, RELAY_SMTP_PLAINTEXT_AUTH_NETWORKS="192.0.2.0/24"
    )
    try:
        acct = await running.new_account()
        c, _ = await RawSMTP.connect(running.smtp_port)
        ehlo = await c.cmd("EHLO client.test")
        assert "AUTH" not in ehlo and "STARTTLS" in ehlo
        assert await c.login(acct.username, acct.password) == replies.AUTH_NEEDS_TLS
        assert await c.starttls() == aio(S.S220_READY_TLS)
        assert "AUTH" in await c.cmd("EHLO client.test")
        assert await c.login(acct.username, acct.password) == replies.AUTH_OK
        await c.close()
        # Implicit TLS (port 465 style) is TLS: AUTH is offered and works at once.
        s, _ = await RawSMTP.connect(running.smtps_port, tls=True)
        assert "AUTH" in await s.cmd("EHLO client.test")
        assert await s.login(acct.username, acct.password) == replies.AUTH_OK
        await s.close()
    finally:
        await stop_relay(running, http)


async def test_reset_or_deleted_credential_stops_at_once(
    running: RunningRelay, account: Account
) -> None:
    c = await session(running, account)
    reset = await running.api.call(
        "emailgateway.resetsmtppassword",
        APIKey=account.api_key,
        SMTPID=(await rows(running, t.smtp_credentials))[0].id,
    )
    assert reset["Success"]
    # The open session authenticated with the old password: its next MAIL is refused.
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.AUTH_INVALID
    # ...and it must AUTH again.
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.AUTH_REQUIRED
    assert await c.login(account.username, account.password) == replies.AUTH_INVALID
    assert await c.login(account.username, reset["SMTP"]["SMTPPassword"]) == replies.AUTH_OK
    await c.close()


# --- MAIL ------------------------------------------------------------------------------------


async def test_mail_from_checks(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    assert await c.cmd("MAIL FROM:<app@other.com>") == replies.SENDER_NOT_OWNED
    assert await c.cmd("MAIL FROM:<app@notexample.com>") == replies.SENDER_NOT_OWNED
    assert await c.cmd("MAIL FROM:<>") == replies.SENDER_NOT_OWNED
    assert await c.cmd("MAIL FROM:<a@sub.example.com>") == replies.SENDER_OK
    assert await c.cmd("RSET") == aio(S.S250_OK)
    assert await c.cmd("MAIL FROM:<app@example.com> SIZE=999999999999") == replies.TOO_BIG
    assert await c.cmd(b"MAIL FROM:<a\rb@example.com>") == replies.SENDER_BAD_SYNTAX
    await c.close()


async def test_sender_domain_not_enabled(running: RunningRelay) -> None:
    acct = await running.new_account(domain="pending.example", enable=False)
    c = await session(running, acct)
    assert await c.cmd("MAIL FROM:<a@pending.example>") == replies.DOMAIN_NOT_ENABLED
    for status in ("Enabled", "Disabled"):
        await running.api.call(
            "emailgateway.setdomainstatus", admin=True, DomainID=acct.domain_id, Status=status
        )
        expected = replies.SENDER_OK if status == "Enabled" else replies.DOMAIN_NOT_ENABLED
        assert await c.cmd("MAIL FROM:<a@pending.example>") == expected
        await c.cmd("RSET")
    await c.close()


async def test_deleted_domain(running: RunningRelay, account: Account) -> None:
    """After emailgateway.deletedomain its credentials fail at AUTH, and a session
    authenticated before gets the "sender domain not Enabled" refusal at MAIL."""
    c = await session(running, account)
    res = await running.api.call(
        "emailgateway.deletedomain", APIKey=account.api_key, DomainID=account.domain_id
    )
    assert res["Success"] is True, res
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.DOMAIN_DELETED
    # Still authenticated: the answer stays the same, and nothing was queued.
    assert await c.cmd("RSET") == aio(S.S250_OK)
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.DOMAIN_DELETED
    await c.close()
    d, _ = await RawSMTP.connect(running.smtp_port)
    await d.cmd("EHLO client.test")
    assert await d.login(account.username, account.password) == replies.AUTH_INVALID
    await d.close()
    assert await rows(running, t.messages) == []


@pytest.mark.parametrize(
    "change", [{"status": "Disabled"}, {"trusted": False}, {"verified": False}]
)
async def test_account_not_allowed(
    running: RunningRelay, account: Account, change: dict[str, Any]
) -> None:
    c = await session(running, account)
    await set_user(running, account.user_id, **change)
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.ACCOUNT_BLOCKED
    await c.close()


# --- RCPT ------------------------------------------------------------------------------------


async def test_suppressed_recipient_does_not_fail_the_others(
    running: RunningRelay, account: Account
) -> None:
    await running.api.call(
        "emailgateway.addsuppression", APIKey=account.api_key, EmailAddress="gone@example.net"
    )
    await running.api.call(
        "emailgateway.addsuppression", admin=True, UserID=0, EmailAddress="global@example.net"
    )
    c = await session(running, account)
    out = await transaction(
        c,
        "app@example.com",
        ["ok@example.net", "GONE@example.net", "global@example.net", "ok2@example.net"],
        msg(),
    )
    assert out[1] == out[4] == replies.RCPT_OK
    assert out[2] == out[3] == replies.RCPT_SUPPRESSED
    queued_id(out[-1])
    assert sorted(r.rcpt for r in await rows(running, t.recipients)) == [
        "ok2@example.net",
        "ok@example.net",
    ]
    rejected = [e for e in await rows(running, t.events) if e.event == "rejected"]
    assert sorted(e.recipient for e in rejected) == ["global@example.net", "gone@example.net"]
    assert {(e.smtp_code, e.smtp_response) for e in rejected} == {(550, replies.RCPT_SUPPRESSED)}
    await c.close()


async def test_recipient_cap(tmp_path: Path, db_url: str) -> None:
    running, http = await start_relay(tmp_path, db_url, RELAY_SMTP_MAX_RECIPIENTS="2")
    try:
        acct = await running.new_account()
        c = await session(running, acct)
        out = await transaction(
            c, "app@example.com", ["a@x.example", "b@x.example", "c@x.example"], msg()
        )
        assert out[1] == out[2] == replies.RCPT_OK
        assert out[3] == replies.TOO_MANY_RCPTS
        queued_id(out[-1])
        await c.close()
    finally:
        await stop_relay(running, http)


async def test_send_limit(running: RunningRelay, account: Account) -> None:
    await set_user(running, account.user_id, send_limit_per_hour=3)
    c = await session(running, account)
    out = await transaction(c, "app@example.com", ["a@x.example", "b@x.example"], msg())
    queued_id(out[-1])
    out = await transaction(c, "app@example.com", ["c@x.example", "d@x.example"], msg())
    assert out[1:3] == [replies.RCPT_OK, replies.SEND_LIMIT]
    queued_id(out[-1])
    out = await transaction(c, "app@example.com", ["e@x.example"], msg())
    assert out[1] == replies.SEND_LIMIT
    await c.close()


async def test_bad_recipient_syntax(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    await c.cmd("MAIL FROM:<app@example.com>")
    assert await c.cmd(b"RCPT TO:<a\x00b@example.net>") == replies.RCPT_BAD_SYNTAX
    assert await c.cmd("RCPT TO:<a..b@example.net>") == replies.RCPT_BAD_SYNTAX
    assert await c.cmd('RCPT TO:<"quoted">') == replies.RCPT_BAD_SYNTAX
    # aiosmtpd's own address parser refuses this one before the policy sees it.
    assert await c.cmd("RCPT TO:<a@b@c>") == aio(S.S553_MALFORMED)
    await c.close()


# --- DATA ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"To: x@example.net\r\nSubject: no from\r\n\r\nbody\r\n", replies.FROM_COUNT),
        (msg(extra="From: other@example.com\r\n"), replies.FROM_COUNT),
        (msg(frm="app@elsewhere.com"), replies.FROM_DOMAIN),
        (
            b"From: not an address\r\n\r\nx\r\n",
            replies.MALFORMED.format(detail="unparseable From header"),
        ),
        (
            b"this is not a header\r\n\r\nx\r\n",
            replies.MALFORMED.format(detail="invalid header line"),
        ),
        (msg(body="nul \x00 here\r\n"), replies.MALFORMED.format(detail="NUL character")),
        (msg(body="x" * 999 + "\r\n"), replies.LINE_TOO_LONG.format(detail="998")),
    ],
    ids=["no-from", "two-from", "from-domain", "bad-from", "bad-header", "nul", "long-line"],
)
async def test_content_checks(
    running: RunningRelay, account: Account, data: bytes, expected: str
) -> None:
    c = await session(running, account)
    out = await transaction(c, "app@example.com", ["r@example.net"], data)
    assert out[-1] == expected, out
    # The session goes on: the next transaction works.
    queued_id((await transaction(c, "app@example.com", ["r@example.net"], msg()))[-1])
    await c.close()


async def test_from_in_a_subdomain_is_allowed(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    out = await transaction(
        c, "app@example.com", ["r@example.net"], msg(frm="news@mail.example.com")
    )
    queued_id(out[-1])
    await c.close()


async def test_too_big(tmp_path: Path, db_url: str) -> None:
    running, http = await start_relay(tmp_path, db_url, RELAY_SMTP_MAX_MESSAGE_SIZE="4096")
    try:
        acct = await running.new_account()
        c = await session(running, acct)
        ehlo = (await c.cmd("EHLO client.test")).split("\n")
        assert replies.EHLO_SIZE.format(size=4096) in ehlo
        assert await c.cmd("MAIL FROM:<app@example.com> SIZE=5000") == replies.TOO_BIG
        big = msg(body=("y" * 70 + "\r\n") * 100)
        out = await transaction(c, "app@example.com", ["r@example.net"], big)
        assert out[-1] == replies.TOO_BIG
        queued_id((await transaction(c, "app@example.com", ["r@example.net"], msg()))[-1])
        await c.close()
    finally:
        await stop_relay(running, http)


async def test_only_crlf_dot_crlf_ends_data(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    await c.cmd("MAIL FROM:<app@example.com>")
    await c.cmd("RCPT TO:<r@example.net>")
    assert await c.cmd("DATA") == replies.DATA_GO_AHEAD
    # Bare LF, bare CR and LF.LF look like ends of data to sloppy parsers: not to us.
    await c.send(
        msg(body="line1\n.\nline2\r.\rline3\r\n..dotted\r\n") + b"\n.\n" + b"tail\r\n.\r\n"
    )
    queued_id(await c.reply())
    (m,) = await rows(running, t.messages)
    assert b"line1\r\n.\r\nline2\r\n.\r\nline3\r\n.dotted\r\n\r\n.\r\ntail\r\n" in m.body
    # Every line ending is CRLF now, so the signature survives aiosmtplib's rewriting later.
    assert m.body.count(b"\n") == m.body.count(b"\r\n") == m.body.count(b"\r")
    await c.close()


async def test_pipelined_transactions(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    one = b"MAIL FROM:<app@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n"
    await c.send(one)
    start = [replies.SENDER_OK, replies.RCPT_OK, replies.DATA_GO_AHEAD]
    assert [await c.reply() for _ in start] == start
    # End of data and the next transaction in one write (RFC 2920).
    await c.send(msg() + b".\r\n" + one)
    queued_id(await c.reply())
    assert [await c.reply() for _ in start] == start
    await c.send(msg() + b".\r\nQUIT\r\n")
    queued_id(await c.reply())
    assert await c.reply() == aio(S.S221_BYE)
    assert len(await rows(running, t.messages)) == 2


async def test_empty_message_is_refused_cleanly(running: RunningRelay, account: Account) -> None:
    c = await session(running, account)
    await c.cmd("MAIL FROM:<app@example.com>")
    assert await c.cmd("DATA") == replies.DATA_NEED_RCPT
    await c.cmd("RCPT TO:<r@example.net>")
    assert await c.cmd("DATA x") == replies.DATA_SYNTAX
    await c.cmd("DATA")
    assert await c.cmd(".") == replies.FROM_COUNT
    await c.close()


# --- protocol hygiene ------------------------------------------------------------------------


async def test_every_reply_has_an_enhanced_code(running: RunningRelay, account: Account) -> None:
    c, _ = await RawSMTP.connect(running.smtp_port)
    for line in (
        "EHLO client.test",
        "NOOP",
        "RSET",
        "FOO",
        "MAIL FROM:<a@example.com>",
        "DATA",
        "VRFY x",
        "AUTH PLAIN !!!",
        "QUIT",
    ):
        reply = await c.cmd(line)
        if line.startswith("EHLO"):
            continue
        code, rest = reply[:3], reply[4:]
        assert code[0] in "2345", reply
        assert rest.split(" ")[0].count(".") == 2, f"{line!r} -> {reply!r}"


async def test_bad_ehlo_names(running: RunningRelay) -> None:
    c, _ = await RawSMTP.connect(running.smtp_port)
    assert await c.cmd(b"EHLO bad\x00name") == replies.EHLO_BAD
    assert await c.cmd(b"HELO bad\rname") == replies.EHLO_BAD
    assert await c.cmd("HELO good.name") == replies.HELO_OK.format(hostname="relay.test")
    assert (await c.cmd("EHLO good.name")).startswith("250-relay.test\n")
    await c.close()


async def test_connection_limit_per_ip(tmp_path: Path, db_url: str) -> None:
    running, http = await start_relay(tmp_path, db_url, RELAY_SMTP_MAX_CONNECTIONS_PER_IP="2")
    try:
        a, _ = await RawSMTP.connect(running.smtp_port)
        b, _ = await RawSMTP.connect(running.smtp_port)
        c, greeting = await RawSMTP.connect(running.smtp_port)
        assert greeting == replies.TOO_MANY_CONNECTIONS
        assert await c.closed()
        await a.close()
        services = running.relay.services
        assert services is not None and services.node_limits is not None
        table = services.node_limits.connections
        await wait_until(lambda: table.open == 1, what="the closed connection's slot freed")
        d, greeting = await RawSMTP.connect(running.smtp_port)
        assert greeting == "220 relay.test relay ESMTP"
        for x in (b, d):
            await x.close()
    finally:
        await stop_relay(running, http)


async def test_storage_unavailable_gives_451_never_250(
    running: RunningRelay, account: Account
) -> None:
    services = running.relay.services
    assert services is not None
    c = await session(running, account)
    async with services.db.write() as conn:
        await conn.execute(text("ALTER TABLE recipients RENAME TO recipients_away"))
    out = await transaction(c, "app@example.com", ["r@example.net"], msg())
    assert out[-1] == replies.TEMPORARY, out  # no internals leak
    async with services.db.write() as conn:
        await conn.execute(text("ALTER TABLE recipients_away RENAME TO recipients"))
    assert (await rows(running, t.messages)) == []  # nothing half-written
    out = await transaction(c, "app@example.com", ["r@example.net"], msg())
    queued_id(out[-1])
    await c.close()


async def test_concurrent_sessions_share_commits(running: RunningRelay, account: Account) -> None:
    async def one() -> list[str]:
        c = await session(running, account)
        results = []
        for _ in range(5):
            results.append((await transaction(c, "app@example.com", ["r@example.net"], msg()))[-1])
        await c.close()
        return results

    results = [r for rs in await asyncio.gather(*(one() for _ in range(10))) for r in rs]
    ids = {queued_id(r) for r in results}
    assert len(ids) == 50
    assert {m.id for m in await rows(running, t.messages)} == ids


async def test_raw_8bit_headers_do_not_poison_the_batch(
    running: RunningRelay, account: Account
) -> None:
    """A legacy client's unencoded Latin-1 Subject is accepted, and a message committed in the
    same batch is not affected by it."""
    bad = msg(extra="X-Note: caf\xe9\r\n").replace(b"Subject: test", b"Subject: caf\xe9 cr\xe8me")
    clients = [await session(running, account) for _ in range(6)]
    results = await asyncio.gather(
        *(
            transaction(c, "app@example.com", ["r@example.net"], bad if i % 2 else msg())
            for i, c in enumerate(clients)
        )
    )
    for r in results:
        queued_id(r[-1])
    subjects = sorted(m.subject for m in await rows(running, t.messages))
    assert subjects == ["caf\ufffd cr\ufffdme"] * 3 + ["test"] * 3
    for c in clients:
        await c.close()
