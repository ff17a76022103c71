"""POST /api/v1/email and emailgateway.smtprelay (001; 002's spellings), on a whole relay node:
every documented error code provoked for real, and accepted mail checked in the queue and
against its DKIM signature."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text, update

from relay.directory import Topics
from relay.smtp import replies
from relay.store import schema as t
from tests.apihelpers import bearer
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay

MAX_RCPTS = 3


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRelay]:
    r, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_SMTP_MAX_RECIPIENTS=str(MAX_RCPTS),
        RELAY_SMTP_MAX_MESSAGE_SIZE="60000",
    )
    yield r
    await stop_relay(r, session)


@pytest.fixture
async def account(running: RunningRelay) -> Account:
    return await running.new_account()


async def key_for(running: RunningRelay, acct: Account) -> str:
    res = await running.api.call(
        "emailgateway.addapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description="send"
    )
    assert res["Success"], res
    return str(res["APIKey"]["APIKey"])


EXAMPLE = {
    "Subject": "Welcome to Our Service",
    "ContentType": "html",
    "HTMLContent": "<h1>Welcome!</h1><p>Thank you for signing up.</p>",
    "From": {"name": "John Doe", "email": "john@example.com"},
    "To": [{"name": "Jane Smith", "email": "jane@example.com"}],
}


async def send(
    running: RunningRelay, key: str | None, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    headers = bearer(key) if key else {}
    status, data = await running.api.request("POST", "/api/v1/email", headers=headers, json=body)
    assert isinstance(data, dict), data
    return status, data


def codes(body: dict[str, Any]) -> list[int]:
    return [e["Code"] for e in body["Errors"]]


async def queued(running: RunningRelay, message_id: str) -> tuple[Any, list[Any], list[Any]]:
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        msg = (await conn.execute(select(t.messages).where(t.messages.c.id == message_id))).one()
        rcpts = (
            await conn.execute(select(t.recipients).where(t.recipients.c.message_id == message_id))
        ).all()
        evs = (
            await conn.execute(select(t.events).where(t.events.c.message_id == message_id))
        ).all()
    return msg, list(rcpts), list(evs)


def verify_dkim(acct: Account, body: bytes) -> bool:
    host, value = acct.dkim_record

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if name.decode().rstrip(".") == host else None

    return bool(dkim.verify(body, dnsfunc=dnsfunc))


async def test_documented_example_is_queued_and_signed(
    running: RunningRelay, account: Account
) -> None:
    key = await key_for(running, account)
    status, body = await send(running, key, EXAMPLE)
    assert status == 200 and set(body) == {"MessageID"}
    assert re.fullmatch(r"[0-9a-f-]{36}", body["MessageID"])
    msg, rcpts, evs = await queued(running, body["MessageID"])
    assert msg.source == "api" and msg.mail_from == "john@example.com"
    assert msg.subject == "Welcome to Our Service"
    assert [r.rcpt for r in rcpts] == ["jane@example.com"]
    assert [e.event for e in evs] == ["accepted"]
    assert verify_dkim(account, msg.body)
    parsed = email.message_from_bytes(msg.body, policy=email.policy.default)
    assert parsed["From"] == "John Doe <john@example.com>"
    assert parsed["To"] == "Jane Smith <jane@example.com>"
    assert parsed["Message-ID"] and parsed["Date"] and parsed["Received"]
    assert "Thank you for signing up." in parsed.get_body(("html",)).get_content()


async def test_002_example_and_rich_message(running: RunningRelay, account: Account) -> None:
    key = await key_for(running, account)
    # 002: SenderAPIKey in the body too, and "HtmlContent".
    status, body = await send(
        running,
        key,
        {
            "SenderAPIKey": key,
            "Subject": "Hello World",
            "ContentType": "html",
            "HtmlContent": '<p>Hello, World! <img src="cid:logo"></p>',
            "PlainContent": "Hello, World! \u00fcber",
            "From": {"email": "sender@example.com", "name": "J\u00f6hn Doe"},
            "To": [{"email": "recipient@example.com", "name": "Jane Doe"}],
            "CC": [{"email": "cc@example.org", "name": "Cc"}],
            "BCC": [{"email": "hidden@example.org", "name": "Hidden"}],
            "ReplyTo": [{"email": "replies@example.com", "name": "Replies"}],
            "Headers": {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
            "Tags": ["welcome", "spring"],
            "TrackLinks": "true",
            "Attachments": [
                {
                    "filename": "logo.png",
                    "content": base64.b64encode(b"\x89PNG fake").decode(),
                    "type": "image/png",
                    "disposition": "inline",
                    "contentid": "logo",
                },
                {
                    "filename": "terms.txt",
                    "content": base64.b64encode(b"terms").decode(),
                    "type": "text/plain",
                },
            ],
        },
    )
    assert status == 200, body
    msg, rcpts, evs = await queued(running, body["MessageID"])
    assert sorted(r.rcpt for r in rcpts) == [
        "cc@example.org",
        "hidden@example.org",
        "recipient@example.com",
    ]
    assert verify_dkim(account, msg.body)
    parsed = email.message_from_bytes(msg.body, policy=email.policy.default)
    assert "hidden@example.org" not in msg.body.decode()  # BCC: envelope only
    assert (
        parsed["Cc"] == "Cc <cc@example.org>"
        and parsed["Reply-To"] == "Replies <replies@example.com>"
    )
    assert parsed["X-Campaign"] == "spring"
    assert parsed.get_body(("plain",)).get_content().strip() == "Hello, World! \u00fcber"
    names = [p.get_filename() for p in parsed.iter_attachments()]
    assert names == ["terms.txt"]
    inline = [p for p in parsed.walk() if p["Content-ID"] == "<logo>"]
    assert len(inline) == 1 and inline[0].get_content() == b"\x89PNG fake"
    # Every line 7-bit and short: nothing downstream needs to re-encode under the signature.
    assert all(len(line) <= 998 for line in msg.body.split(b"\r\n"))
    assert max(msg.body) < 128
    assert [e.data for e in evs] == [{"tags": ["welcome", "spring"]}] * 3
    today = time.strftime("%Y-%m-%d", time.gmtime())
    stats = await running.api.call(
        "emailgateway.domainstats",
        APIKey=account.api_key,
        DomainID=account.domain_id,
        StartDate=today,
        EndDate=today,
    )
    assert stats["TagStats"] == {
        "spring": {"Sent": 3, "Delivered": 0},
        "welcome": {"Sent": 3, "Delivered": 0},
    }


async def test_authentication_codes(running: RunningRelay, account: Account) -> None:
    assert await send(running, None, EXAMPLE) == (
        401,
        {"Errors": [{"Code": 1, "Message": "Missing SenderAPIKey"}]},
    )
    assert await send(running, "eg_live_nope", EXAMPLE) == (
        401,
        {"Errors": [{"Code": 13, "Message": "Invalid SenderAPIKey"}]},
    )


async def set_user(running: RunningRelay, acct: Account, **params: Any) -> None:
    res = await running.api.call("user.update", admin=True, UserID=acct.user_id, **params)
    assert res["Success"], res


async def test_account_and_domain_codes(running: RunningRelay, account: Account) -> None:
    key = await key_for(running, account)
    await set_user(running, account, Status="Disabled")
    assert (await send(running, key, EXAMPLE)) == (
        403,
        {"Errors": [{"Code": 12, "Message": "Invalid or deactivated user account"}]},
    )
    await set_user(running, account, Status="Enabled", Trusted=0)
    status, body = await send(running, key, EXAMPLE)
    assert (status, codes(body)) == (403, [12])
    await set_user(running, account, Trusted=1, Verified=0)
    assert (await send(running, key, EXAMPLE)) == (
        403,
        {"Errors": [{"Code": 34, "Message": "User account is not verified"}]},
    )
    await set_user(running, account, Verified=1)
    await running.api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=account.domain_id, Status="Disabled"
    )
    assert (await send(running, key, EXAMPLE)) == (
        403,
        {"Errors": [{"Code": 32, "Message": "Domain is not activated"}]},
    )
    # The domain deleted under a key that still exists (as emailgateway.deletedomain does).
    services = running.relay.services
    assert services is not None
    async with services.db.write() as conn:
        await conn.execute(
            update(t.gateway_domains)
            .where(t.gateway_domains.c.id == account.domain_id)
            .values(status="Deleted")
        )
    await services.bus.publish(Topics.DOMAIN, account.domain_id)
    status, body = await send(running, key, EXAMPLE)
    assert (status, codes(body)) == (403, [2])


async def test_send_at_schedules_within_72_hours_and_a_little_past_is_now(
    running: RunningRelay, account: Account
) -> None:
    key = await key_for(running, account)
    # Up to 72 hours ahead: committed now (accepted event, MessageID), due at SendAt.
    later = int(time.time()) + 72 * 3600 - 60
    status, res = await send(running, key, {**EXAMPLE, "SendAt": later})
    assert status == 200, res
    msg, rcpts, evs = await queued(running, res["MessageID"])
    assert msg.not_before == later
    assert [(r.state, r.next_attempt_at) for r in rcpts] == [("queued", later)]
    assert [e.event for e in evs] == ["accepted"]
    # A few minutes in the past (clock skew), or 0: now, not scheduled.
    for send_at in (int(time.time()) - 300, 0):
        status, res = await send(running, key, {**EXAMPLE, "SendAt": send_at})
        assert status == 200, res
        msg, rcpts, _ = await queued(running, res["MessageID"])
        assert msg.not_before is None
        assert rcpts[0].next_attempt_at <= time.time()
    # The answers name what is wrong.
    status, res = await send(running, key, {**EXAMPLE, "SendAt": int(time.time()) - 700})
    assert (status, res["Errors"]) == (
        400,
        [{"Code": 43, "Message": "SendAt is more than 10 minutes in the past"}],
    )
    status, res = await send(running, key, {**EXAMPLE, "SendAt": int(time.time()) + 73 * 3600})
    assert (status, res["Errors"]) == (
        400,
        [{"Code": 43, "Message": "SendAt is more than 72 hours ahead"}],
    )
    status, res = await send(running, key, {**EXAMPLE, "SendAt": "in an hour"})
    assert (status, res["Errors"]) == (
        400,
        [{"Code": 42, "Message": "Invalid SendAt (a Unix time, in seconds)"}],
    )


async def test_content_codes(running: RunningRelay, account: Account) -> None:
    key = await key_for(running, account)

    async def check(
        change: dict[str, Any], expected: list[int], drop: tuple[str, ...] = ()
    ) -> None:
        body = {k: v for k, v in {**EXAMPLE, **change}.items() if k not in drop}
        status, res = await send(running, key, body)
        assert (status, codes(res)) == (400, expected), (change, drop, res)

    await check({}, [3], drop=("From",))
    await check({"From": {"name": "x"}}, [3])
    await check({"From": {"name": "x", "email": "x@elsewhere.com"}}, [3])
    await check({"From": {"name": "x", "email": "not-an-address"}}, [23])
    await check({}, [8], drop=("Subject",))
    await check({}, [9], drop=("ContentType",))
    await check({"ContentType": "markdown"}, [9])
    await check({}, [10], drop=("HTMLContent",))
    await check({"ContentType": "plain"}, [11])
    await check({"TemplateID": 7}, [15])
    await check({"TargetListID": 3}, [16])
    await check({"To": [{"name": "No address"}]}, [18])
    await check({"To": [{"name": "x", "email": "bad@"}]}, [19])
    await check({}, [8, 20], drop=("To",))
    await check({"To": []}, [8, 20])
    await check({"To": [{"email": f"r{i}@example.net"} for i in range(MAX_RCPTS + 1)]}, [20])
    await check({"CC": [{"name": "cc"}]}, [21])
    await check({"CC": [{"email": "cc@"}]}, [22])
    await check({"BCC": {"email": "b@example.net"}}, [24])
    await check({"BCC": [{"name": "b"}]}, [25])
    await check({"BCC": [{"email": "b@@example.net"}]}, [26])
    await check(
        {"BCC": [{"email": f"b{i}@example.net"} for i in range(MAX_RCPTS + 1)]},
        [20, 27],
    )
    await check({"ReplyTo": "r@example.com"}, [28])
    await check({"ReplyTo": [{"name": "r"}]}, [29])
    await check({"ReplyTo": [{"email": "r@"}]}, [30])
    await check({"ReplyTo": [{"email": f"r{i}@example.com"} for i in range(11)]}, [31])
    await check({"ListID": 1}, [35])
    await check({"SubscriberID": 1}, [36])
    await check({"JourneyID": 1}, [37])
    await check({"ActionID": 1}, [38])
    await check({"Attachments": [{"filename": "a.txt", "content": "not base64!"}]}, [39])
    await check({"Attachments": [{"content": "aGk="}]}, [39])
    await check({"Headers": {"From": "spoof@example.com"}}, [40])
    await check({"Headers": {"X-Evil": "a\r\nBcc: victim@example.org"}}, [40])
    await check({"Headers": {"Bad Name": "x"}}, [40])
    await check({"SendAt": "tomorrow"}, [42])
    await check({"SendAt": 1.5}, [42])
    await check({"SendAt": -1}, [42])
    await check({"SendAt": int(time.time()) - 3600}, [43])
    await check({"SendAt": int(time.time()) + 73 * 3600}, [43])
    # Several problems at once are all reported.
    status, res = await send(running, key, {"ContentType": "html"})
    assert status == 400 and codes(res) == [3, 8, 10, 20]
    # A context ID of 0 means none; SendAt a little in the past means now.
    status, res = await send(
        running, key, {**EXAMPLE, "ListID": 0, "SendAt": int(time.time()) - 300}
    )
    assert status == 200, res
    # Addresses may also be given as "Name <address>" strings.
    status, res = await send(
        running,
        key,
        {**EXAMPLE, "From": "John Doe <john@example.com>", "To": ["Jane <jane@example.com>"]},
    )
    assert status == 200, res


async def test_size_suppression_and_send_limit(running: RunningRelay, account: Account) -> None:
    key = await key_for(running, account)
    status, res = await send(running, key, {**EXAMPLE, "HTMLContent": "<p>" + "x" * 70_000})
    assert status == 422 and codes(res) == [41]
    await running.api.call(
        "emailgateway.addsuppression", APIKey=account.api_key, EmailAddress="Jane@Example.com"
    )
    status, res = await send(running, key, EXAMPLE)
    assert (
        status == 422 and codes(res) == [14] and "jane@example.com" in res["Errors"][0]["Message"]
    )
    await running.api.call(
        "emailgateway.addsuppression", admin=True, UserID=0, EmailAddress="global@example.net"
    )
    status, res = await send(
        running, key, {**EXAMPLE, "To": [{"name": "G", "email": "global@example.net"}]}
    )
    assert codes(res) == [14]
    await set_user(running, account, SendLimitPerHour=2)
    two = {**EXAMPLE, "To": [{"email": "a@example.net"}, {"email": "b@example.net"}]}
    status, res = await send(running, key, two)
    assert status == 200, res
    status, res = await send(running, key, {**EXAMPLE, "To": [{"email": "c@example.net"}]})
    assert (status, res) == (
        429,
        {"Errors": [{"Code": 17, "Message": "Email sending limit reached"}]},
    )
    # One limit per account, whichever front end counted it.
    res = await relay_call(
        running,
        SMTPUsername=account.username,
        SMTPPassword=account.password,
        RcptTo="c@example.net",
    )
    assert answer(res) == (9, replies.SEND_LIMIT)


# -- emailgateway.smtprelay ----------------------------------------------------------------------


RAW = "From: App <app@example.com>\r\nTo: rcpt@example.net\r\nSubject: Test Email\r\n\r\nHello.\r\n"


async def relay_call(running: RunningRelay, **params: Any) -> dict[str, Any]:
    return await running.api.call("emailgateway.smtprelay", admin=True, **params)


def answer(res: dict[str, Any]) -> tuple[int, str]:
    """smtprelay's (ErrorCode, SMTPResponse)."""
    assert res["Success"] is (res["ErrorCode"] == 0), res
    return res["ErrorCode"], res["SMTPResponse"]


async def all_messages(running: RunningRelay) -> list[Any]:
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        return list((await conn.execute(select(t.messages))).all())


async def test_smtprelay_documented_examples(running: RunningRelay, account: Account) -> None:
    res = await relay_call(running, SMTPUsername=account.username, SMTPPassword=account.password)
    assert res == {
        "Success": True,
        "ErrorCode": 0,
        "SMTPUsername": account.username,
        "SMTPPassword": account.password,
        "_status": 200,
    }
    res = await relay_call(
        running,
        SMTPUsername=account.username,
        SMTPPassword=account.password,
        UUID="550e8400-e29b-41d4-a716-446655440000",
        MailFrom="app@example.com",
        RcptTo="rcpt@example.net, second@example.net",
        Subject="Test Email",
        RawEmail=RAW,
    )
    assert res["Success"] is True and res["ErrorCode"] == 0
    queue_id = res["SMTPResponse"].rsplit(" ", 1)[-1]
    assert res["SMTPResponse"] == replies.QUEUED.format(id=queue_id), res
    msg, rcpts, _ = await queued(running, queue_id)
    assert sorted(r.rcpt for r in rcpts) == ["rcpt@example.net", "second@example.net"]
    assert verify_dkim(account, msg.body)


async def test_smtprelay_codes(running: RunningRelay, account: Account) -> None:
    creds = {"SMTPUsername": account.username, "SMTPPassword": account.password}
    res = await relay_call(running, SMTPPassword="x")
    assert answer(res) == (1, replies.AUTH_INVALID)
    assert answer(await relay_call(running, SMTPUsername="x")) == (2, replies.AUTH_INVALID)
    res = await relay_call(running, SMTPUsername=account.username, SMTPPassword="wrong")
    assert res == {
        "Success": False,
        "ErrorCode": 3,
        "ErrorText": "Invalid SMTP credentials",
        "SMTPResponse": "500 5.0.0 AUTH ERROR",
        "_status": 200,
    }
    res = await relay_call(running, **creds, MailFrom="x@elsewhere.com")
    assert answer(res) == (4, replies.SENDER_NOT_OWNED)
    res = await relay_call(running, **creds, MailFrom="x@@example.com")
    assert answer(res) == (4, replies.SENDER_BAD_SYNTAX)
    res = await relay_call(
        running,
        **creds,
        RcptTo="rcpt@example.net",
        RawEmail=RAW.replace("app@example.com", "app@elsewhere.com"),
    )
    assert answer(res) == (9, replies.FROM_DOMAIN)
    res = await relay_call(running, **creds, RcptTo="rcpt@example.net", RawEmail="no header\r\n")
    assert answer(res) == (9, replies.MALFORMED.format(detail="invalid header line"))
    res = await relay_call(running, **creds, RcptTo="bad@")
    assert answer(res) == (9, replies.RCPT_BAD_SYNTAX)
    assert res["ErrorText"] == "Invalid recipient bad@"
    # The same recipient cap as an SMTP transaction.
    many = ",".join(f"r{i}@example.net" for i in range(MAX_RCPTS + 1))
    assert answer(await relay_call(running, **creds, RcptTo=many)) == (9, replies.TOO_MANY_RCPTS)
    await running.api.call(
        "emailgateway.addsuppression", APIKey=account.api_key, EmailAddress="blocked@example.net"
    )
    res = await relay_call(running, **creds, RcptTo="ok@example.net,blocked@example.net")
    assert answer(res) == (8, replies.RCPT_SUPPRESSED)
    res = await relay_call(running, **creds, RawEmail=RAW)  # no RcptTo
    assert answer(res) == (9, replies.NO_RECIPIENTS)
    await running.api.call(
        "emailgateway.setdomainstatus", admin=True, DomainID=account.domain_id, Status="Disabled"
    )
    assert answer(await relay_call(running, **creds)) == (5, replies.DOMAIN_NOT_ENABLED)
    await set_user(running, account, Trusted=0)
    assert answer(await relay_call(running, **creds)) == (7, replies.ACCOUNT_BLOCKED)
    await set_user(running, account, Trusted=1, Status="Disabled")
    assert answer(await relay_call(running, **creds)) == (7, replies.ACCOUNT_BLOCKED)
    await set_user(running, account, Status="Enabled", Verified=0)
    assert answer(await relay_call(running, **creds)) == (7, replies.ACCOUNT_BLOCKED)
    await running.api.call("user.delete", admin=True, UserID=account.user_id)
    # Deleting the user deletes its credentials: they are now simply invalid.
    assert answer(await relay_call(running, **creds)) == (3, replies.RELAY_AUTH_ERROR)
    # Admin only.
    res = await running.api.call("emailgateway.smtprelay", APIKey=account.api_key, **creds)
    assert res["ErrorCode"] == 99998


async def test_smtprelay_invalid_user_account(running: RunningRelay, account: Account) -> None:
    creds = {"SMTPUsername": account.username, "SMTPPassword": account.password}
    services = running.relay.services
    assert services is not None
    # The user row deleted under a credential that still exists.
    async with services.db.write() as conn:
        await conn.execute(
            update(t.users).where(t.users.c.id == account.user_id).values(status="Deleted")
        )
    await services.bus.publish(Topics.USER, account.user_id)
    assert answer(await relay_call(running, **creds)) == (6, replies.ACCOUNT_BLOCKED)
    # And a domain deleted under its credential: "Invalid sender domain".
    async with services.db.write() as conn:
        await conn.execute(
            update(t.users).where(t.users.c.id == account.user_id).values(status="Enabled")
        )
        await conn.execute(
            update(t.gateway_domains)
            .where(t.gateway_domains.c.id == account.domain_id)
            .values(status="Deleted")
        )
    await services.bus.publish(Topics.USER, account.user_id)
    await services.bus.publish(Topics.DOMAIN, account.domain_id)
    assert answer(await relay_call(running, **creds)) == (4, replies.DOMAIN_DELETED)


async def test_smtprelay_after_deletedomain(running: RunningRelay, account: Account) -> None:
    """emailgateway.deletedomain retires the domain's credentials with it: smtprelay answers
    the deleted sender domain (what SMTP answers at MAIL), not a mere wrong password."""
    creds = {"SMTPUsername": account.username, "SMTPPassword": account.password}
    res = await running.api.call(
        "emailgateway.deletedomain", APIKey=account.api_key, DomainID=account.domain_id
    )
    assert res["Success"] is True, res
    res = await relay_call(running, **creds, RcptTo="r@example.net", RawEmail=RAW)
    assert res == {
        "Success": False,
        "ErrorCode": 4,
        "ErrorText": "Invalid sender domain",
        "SMTPResponse": replies.DOMAIN_DELETED,
        "_status": 200,
    }
    # A wrong password stays a wrong password.
    res = await relay_call(running, SMTPUsername=account.username, SMTPPassword="wrong")
    assert answer(res) == (3, replies.RELAY_AUTH_ERROR)
    assert await all_messages(running) == []


async def test_storage_unavailable_is_99996_and_503(
    running: RunningRelay, account: Account
) -> None:
    """A database failure while queueing: the documented temporary error, nothing queued."""
    key = await key_for(running, account)
    creds = {"SMTPUsername": account.username, "SMTPPassword": account.password}
    services = running.relay.services
    assert services is not None
    async with services.db.write() as conn:
        await conn.execute(text("ALTER TABLE recipients RENAME TO recipients_away"))
    try:
        assert await send(running, key, EXAMPLE) == (
            503,
            {"Errors": [{"Code": 99996, "Message": "Temporary failure, please try again later"}]},
        )
        res = await relay_call(running, **creds, RcptTo="r@example.net", RawEmail=RAW)
        assert res == {
            "Success": False,
            "ErrorCode": 99996,
            "ErrorText": "Temporary failure, please try again later",
            "SMTPResponse": replies.TEMPORARY,
            "_status": 503,
        }
    finally:
        async with services.db.write() as conn:
            await conn.execute(text("ALTER TABLE recipients_away RENAME TO recipients"))
    assert await all_messages(running) == []
    status, _ = await send(running, key, EXAMPLE)
    assert status == 200


def requests_counted(command: str, status: int, error_code: int) -> float:
    labels = {"command": command, "status": str(status), "error_code": str(error_code)}
    return REGISTRY.get_sample_value("relay_api_requests_total", labels) or 0.0


async def test_failures_are_counted_under_their_error_code(
    running: RunningRelay, account: Account
) -> None:
    """Legacy errors are HTTP 200 as documented; the metric still shows them as failures."""
    relay_wrong = ("emailgateway.smtprelay", 200, 3)
    relay_ok = ("emailgateway.smtprelay", 200, 0)
    send_refused = ("emailgateway.sendemail.public", 400, 3)
    unknown = ("(unknown)", 200, 99997)
    before = [requests_counted(*c) for c in (relay_wrong, relay_ok, send_refused, unknown)]
    await relay_call(running, SMTPUsername=account.username, SMTPPassword="wrong")
    await relay_call(running, SMTPUsername=account.username, SMTPPassword=account.password)
    key = await key_for(running, account)
    await send(running, key, {**EXAMPLE, "From": {"email": "x@elsewhere.com"}})
    res = await running.api.call("no.such.command")
    assert res == {
        "Success": False,
        "ErrorCode": 99997,
        "ErrorText": "Invalid command",
        "_status": 200,
    }
    after = [requests_counted(*c) for c in (relay_wrong, relay_ok, send_refused, unknown)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]
