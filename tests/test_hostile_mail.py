"""Hostile mail: dot-unstuffing of lines that end in a bare LF or CR, and a From header whose
domain is not a domain. Through a real relay (SMTP and emailgateway.smtprelay), on SQLite and
PostgreSQL, and the unstuffing rule itself as a property."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from relay import policy
from relay.message import dot_unstuff, normalize_line_endings
from relay.smtp import replies
from relay.store import schema as t
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


async def session(running: RunningRelay, acct: Account) -> RawSMTP:
    c, _greeting = await RawSMTP.connect(running.smtp_port)
    await c.cmd("EHLO client.test")
    assert await c.login(acct.username, acct.password) == replies.AUTH_OK
    return c


async def data(c: RawSMTP, wire: bytes) -> str:
    """One transaction whose DATA is ``wire`` (dot-stuffed by the caller), terminator added."""
    assert await c.cmd("MAIL FROM:<app@example.com>") == replies.SENDER_OK
    assert await c.cmd("RCPT TO:<r@example.net>") == replies.RCPT_OK
    assert await c.cmd("DATA") == replies.DATA_GO_AHEAD
    await c.send(wire + b"\r\n.\r\n")
    return await c.reply()


async def stored_body(running: RunningRelay, reply: str) -> bytes:
    queue_id = reply.rsplit(" ", 1)[-1]
    assert reply == replies.QUEUED.format(id=queue_id), reply
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        body = await conn.scalar(select(t.messages.c.body).where(t.messages.c.id == queue_id))
    assert body is not None
    return bytes(body)


HEAD = b"From: App <app@example.com>\r\nTo: r@example.net\r\nSubject: dots\r\n\r\n"


async def test_stuffed_lines_after_a_bare_lf_lose_their_dot(
    running: RunningRelay, account: Account
) -> None:
    c = await session(running, account)
    # A client that ends lines with a bare LF stuffs "." to "..", ".x" to "..x" (RFC 5321
    # 4.5.2): they arrive as "." and ".x", as with CRLF lines, never as "..".
    reply = await data(c, HEAD + b"a\n..\nb\n..x\r\n..crlf\r\nc\r..cr\rend")
    body = await stored_body(running, reply)
    assert body.endswith(b"\r\n\r\na\r\n.\r\nb\r\n.x\r\n.crlf\r\nc\r\n.cr\r\nend\r\n"), body
    # A lone "." line that did not end DATA (it is not CRLF "." CRLF) is content, kept.
    reply = await data(c, HEAD + b"one\n.\ntwo")
    assert (await stored_body(running, reply)).endswith(b"\r\n\r\none\r\n.\r\ntwo\r\n")
    await c.close()


async def test_a_from_domain_that_is_no_domain_is_refused(
    running: RunningRelay, account: Account
) -> None:
    malformed = replies.MALFORMED.format(detail="the From address has no valid domain")
    assert malformed == "554 5.6.0 Malformed message: the From address has no valid domain"
    c = await session(running, account)
    for frm in (
        "app@example.com...",
        "App <app@example.com.>",
        "app@example..com",
        "app@.example.com",
        "app@[127.0.0.1]",
    ):
        head = f"From: {frm}\r\nTo: r@example.net\r\nSubject: x\r\n\r\n".encode()
        assert await data(c, head + b"body") == malformed, frm
    # The email package would read "exa mple.com" as "example.com": not the header's domain.
    head = b"From: <app@exa mple.com>\r\nTo: r@example.net\r\nSubject: x\r\n\r\n"
    unparseable = replies.MALFORMED.format(detail="unparseable From header")
    assert await data(c, head + b"body") == unparseable
    # The same message through emailgateway.smtprelay: its code for a refused message, with
    # the SMTP reply.
    res = await running.api.call(
        "emailgateway.smtprelay",
        admin=True,
        SMTPUsername=account.username,
        SMTPPassword=account.password,
        MailFrom="app@example.com",
        RcptTo="r@example.net",
        RawEmail="From: app@example.com...\r\nTo: r@example.net\r\nSubject: x\r\n\r\nbody\r\n",
    )
    assert (res["ErrorCode"], res["SMTPResponse"]) == (9, malformed), res
    # A subdomain of the sender domain, and the domain in another case, still pass.
    for frm in ("app@mail.example.com", "App <app@EXAMPLE.com>"):
        head = f"From: {frm}\r\nTo: r@example.net\r\nSubject: x\r\n\r\n".encode()
        reply = await data(c, head + b"body")
        assert reply.startswith("250 2.0.0 Ok: queued as "), (frm, reply)
    await c.close()
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        count = await conn.scalar(
            select(t.messages.c.id).where(t.messages.c.header_from.like("%..."))
        )
    assert count is None  # nothing of the refused ones was queued


def test_policy_names_the_reason() -> None:
    from relay.config import load

    settings = load(None, env={})
    with pytest.raises(policy.Refused) as exc:
        policy.check_content(settings, b"From: a@example.com...\r\n\r\nx\r\n", "example.com")
    assert exc.value.reason is policy.Reason.MESSAGE_MALFORMED
    data, _msg = policy.check_content(
        settings, b"From: a@Sub.Example.com\r\n\r\nx\r\n", "example.com"
    )
    assert data.endswith(b"x\r\n")


# -- the rule: unstuffing and normalizing agree on what a line is -------------------------------

_LINE_END = re.compile(rb"\r\n|\n")


def stuff(text: bytes) -> bytes:
    """What a client that splits lines at LF (with or without CR) sends: a dot before every
    line that starts with one (RFC 5321 4.5.2)."""
    parts = _LINE_END.split(text)
    ends = [*_LINE_END.findall(text), b""]
    stuffed = (b"." + p if p.startswith(b".") else p for p in parts)
    return b"".join(p + e for p, e in zip(stuffed, ends, strict=True))


@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.sampled_from(".ab \t"), max_size=6).map(str.encode),
            st.sampled_from([b"\r\n", b"\n"]),
        ),
        max_size=12,
    )
)
def test_unstuffing_undoes_stuffing_whatever_the_line_endings(
    lines: list[tuple[bytes, bytes]],
) -> None:
    content = b"".join(line + end for line, end in lines)
    wire = stuff(content)
    if b"\r\n.\r\n" in b"\r\n" + wire:
        return  # cannot be: a "." line is sent as ".."
    received = dot_unstuff(b"\r\n" + wire)[2:]
    assert normalize_line_endings(received) == normalize_line_endings(content)
