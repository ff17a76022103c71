"""relay.policy on its own, against real storage (SQLite and PostgreSQL) and the real cached
Directory; accounts are made and changed through the admin API, as an operator would.

The front ends (SMTP, /api/v1/email, emailgateway.smtprelay) are tested end to end in
test_smtp.py and test_api_send.py; here each rule and its order is pinned down directly, and
each front end's table is checked to answer every reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay import config, policy
from relay.admin import refusals
from relay.directory import CredentialView
from relay.policy import Reason, Refused
from relay.ratelimit import SEND_WINDOW, send_limit_key
from relay.services import Services
from relay.smtp import replies
from tests.apihelpers import make_account
from tests.conftest import Api, make_settings

MAX_RCPTS = 3


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    return make_settings(
        tmp_path,
        db_url,
        RELAY_SMTP_MAX_RECIPIENTS=str(MAX_RCPTS),
        RELAY_SMTP_MAX_MESSAGE_SIZE="2000",
        RELAY_SMTP_MAX_LINE_LENGTH="100",
    )


@dataclass
class Sender:
    """An account with an Enabled domain and an SMTP credential, as the API made them."""

    api: Api
    services: Services
    user_id: int
    api_key: str
    domain_id: int
    username: str
    password: str

    async def admin(self, command: str, **params: Any) -> None:
        res = await self.api.call(command, admin=True, **params)
        assert res["Success"] is True, res

    async def user(self, command: str, **params: Any) -> dict[str, Any]:
        res = await self.api.call(command, APIKey=self.api_key, **params)
        assert res["Success"] is True, res
        return res

    async def credential(self) -> CredentialView:
        return await policy.authenticate(self.services.directory, self.username, self.password)


@pytest.fixture
async def sender(api: Api, services: Services) -> Sender:
    acct = await make_account(api)
    res = await api.call("emailgateway.addsmtp", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert res["Success"] is True, res
    return Sender(
        api,
        services,
        acct.user_id,
        acct.api_key,
        acct.domain_id,
        res["SMTP"]["SMTPUsername"],
        res["SMTP"]["SMTPPassword"],
    )


@contextlib.contextmanager
def refused(reason: Reason, detail: str | None = None) -> Iterator[None]:
    """The block raises Refused for ``reason`` (and with ``detail``, when given)."""
    with pytest.raises(Refused) as info:
        yield
    assert info.value.reason is reason, info.value
    if detail is not None:
        assert info.value.detail == detail


# -- AUTH -------------------------------------------------------------------------------------


async def test_authenticate(sender: Sender) -> None:
    directory = sender.services.directory
    cred = await policy.authenticate(directory, sender.username, sender.password)
    assert (cred.username, cred.user_id, cred.domain_id) == (
        sender.username,
        sender.user_id,
        sender.domain_id,
    )
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.authenticate(directory, sender.username, "wrong")
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.authenticate(directory, "nobody", sender.password)
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.authenticate(directory, sender.username, "")


async def test_deleted_credential_is_invalid(sender: Sender) -> None:
    listed = await sender.user("emailgateway.getsmtps", DomainID=sender.domain_id)
    await sender.user("emailgateway.deletesmtp", SMTPID=listed["SMTPs"][0]["SMTPID"])
    with refused(Reason.CREDENTIAL_INVALID):
        await sender.credential()


async def test_credential_of_a_deleted_domain(sender: Sender) -> None:
    """Retired with its domain: the right password learns why, a wrong one learns nothing."""
    cred = await sender.credential()
    await sender.user("emailgateway.deletedomain", DomainID=sender.domain_id)
    directory = sender.services.directory
    with refused(Reason.DOMAIN_DELETED):
        await sender.credential()
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.authenticate(directory, sender.username, "wrong")
    # A session that authenticated before the delete: refused at MAIL for the same reason.
    with refused(Reason.DOMAIN_DELETED):
        await policy.check_sender(directory, cred, "app@example.com")


async def test_credential_of_a_deleted_user(sender: Sender) -> None:
    """user.delete retires everything of the account: the credential is simply invalid."""
    cred = await sender.credential()
    await sender.admin("user.delete", UserID=sender.user_id)
    with refused(Reason.CREDENTIAL_INVALID):
        await sender.credential()
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.check_sender(sender.services.directory, cred, "app@example.com")


# -- MAIL -------------------------------------------------------------------------------------


async def test_sender(sender: Sender) -> None:
    directory = sender.services.directory
    cred = await sender.credential()
    s = await policy.check_sender(directory, cred, "app@example.com")
    assert (s.user.id, s.domain.id, s.domain.name, s.mail_from) == (
        sender.user_id,
        sender.domain_id,
        "example.com",
        "app@example.com",
    )
    assert (await policy.check_sender(directory, cred, "a@Mail.Example.COM")).mail_from
    # No envelope sender given (smtprelay without MailFrom): account and domain only.
    assert (await policy.check_sender(directory, cred, None)).mail_from == ""
    for address in ("app@other.com", "app@notexample.com", "", "<>"):
        with refused(Reason.SENDER_NOT_OWNED, "example.com"):
            await policy.check_sender(directory, cred, address)
    for address in ("a\rb@example.com", "no-at-sign", "a@@example.com", '"q"@example.com'):
        with refused(Reason.SENDER_INVALID):
            await policy.check_sender(directory, cred, address)


async def test_reset_password_ends_the_session_credential(sender: Sender) -> None:
    cred = await sender.credential()
    listed = await sender.user("emailgateway.getsmtps", DomainID=sender.domain_id)
    await sender.user("emailgateway.resetsmtppassword", SMTPID=listed["SMTPs"][0]["SMTPID"])
    with refused(Reason.CREDENTIAL_INVALID):
        await policy.check_sender(sender.services.directory, cred, "app@example.com")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Status": "Disabled"}, Reason.USER_DISABLED),
        ({"Trusted": 0}, Reason.USER_DISABLED),
        ({"Verified": 0}, Reason.USER_NOT_VERIFIED),
    ],
)
async def test_account_status(sender: Sender, change: dict[str, Any], reason: Reason) -> None:
    cred = await sender.credential()
    await sender.admin("user.update", UserID=sender.user_id, **change)
    with refused(reason):
        await policy.check_sender(sender.services.directory, cred, "app@example.com")


async def test_domain_status_and_the_order_of_checks(sender: Sender) -> None:
    directory = sender.services.directory
    cred = await sender.credential()
    for status in ("Disabled", "Approval Pending"):
        await sender.admin("emailgateway.setdomainstatus", DomainID=sender.domain_id, Status=status)
        with refused(Reason.DOMAIN_NOT_ENABLED):
            await policy.check_sender(directory, cred, "app@example.com")
        # The domain is checked before the address...
        with refused(Reason.DOMAIN_NOT_ENABLED):
            await policy.check_sender(directory, cred, "app@elsewhere.com")
    # ...and the user before the domain.
    await sender.admin("user.update", UserID=sender.user_id, Status="Disabled")
    with refused(Reason.USER_DISABLED):
        await policy.check_sender(directory, cred, "app@example.com")


def test_check_account_without_rows() -> None:
    with refused(Reason.USER_DELETED):
        policy.check_account(None, None)


async def test_check_size(settings: config.Settings) -> None:
    policy.check_size(settings, 2000)
    with refused(Reason.MESSAGE_TOO_BIG):
        policy.check_size(settings, 2001)


# -- RCPT -------------------------------------------------------------------------------------


async def test_recipient(sender: Sender) -> None:
    services = sender.services
    directory, limiter, settings = services.directory, services.limiter, services.settings
    user = (await policy.check_sender(directory, await sender.credential(), None)).user

    async def check(rcpt: str, accepted_so_far: int = 0) -> None:
        await policy.check_recipient(directory, limiter, settings, user, rcpt, accepted_so_far)

    await check("r@example.net")
    for bad in ("a\x00b@example.net", "a..b@example.net", '"q"@example.net', "r@", "r"):
        with refused(Reason.RECIPIENT_INVALID, bad):
            await check(bad)
    await sender.user("emailgateway.addsuppression", EmailAddress="Gone@Example.net")
    await sender.admin("emailgateway.addsuppression", UserID=0, EmailAddress="all@example.net")
    for suppressed in ("gone@example.net", "GONE@example.net", "all@example.net"):
        with refused(Reason.RECIPIENT_SUPPRESSED, suppressed):
            await check(suppressed)
    # Suppression before the cap: the suppressed one is refused as such even when full.
    with refused(Reason.RECIPIENT_SUPPRESSED):
        await check("gone@example.net", MAX_RCPTS)
    await check("r@example.net", MAX_RCPTS - 1)
    with refused(Reason.TOO_MANY_RECIPIENTS, str(MAX_RCPTS)):
        await check("r@example.net", MAX_RCPTS)


async def test_send_limit(sender: Sender) -> None:
    services = sender.services
    directory, limiter, settings = services.directory, services.limiter, services.settings
    await sender.admin("user.update", UserID=sender.user_id, SendLimitPerHour=3)
    user = (await policy.check_sender(directory, await sender.credential(), None)).user
    assert user.send_limit_per_hour == 3
    key = send_limit_key(user.id)
    await limiter.add(key, SEND_WINDOW, 2)
    # One more fits, and is counted at once (reserved); a second one does not.
    held = await policy.check_recipient(directory, limiter, settings, user, "a@example.net", 0)
    assert held is not None and await limiter.count(key, SEND_WINDOW) == 3
    with refused(Reason.SEND_LIMIT):
        await policy.check_recipient(directory, limiter, settings, user, "b@example.net", 1)
    # Given back (the message was not committed): it fits again.
    held.release()
    assert await limiter.count(key, SEND_WINDOW) == 2
    held = await policy.check_recipients(directory, limiter, settings, user, ["a@example.net"])
    assert held is not None and held.amount == 1
    held.release()
    with refused(Reason.SEND_LIMIT):
        await policy.check_recipients(
            directory, limiter, settings, user, ["a@example.net", "b@example.net"]
        )
    assert await limiter.count(key, SEND_WINDOW) == 2  # a refusal counts nothing
    # No recipients (smtprelay checking a credential only): nothing to count.
    await limiter.add(key, SEND_WINDOW, 5)
    assert await policy.check_recipients(directory, limiter, settings, user, []) is None
    # No limit: nothing reserved.
    await sender.admin("user.update", UserID=sender.user_id, SendLimitPerHour=0)
    user = (await policy.check_sender(directory, await sender.credential(), None)).user
    assert (
        await policy.check_recipient(directory, limiter, settings, user, "c@example.net", 0) is None
    )


async def test_recipients_at_once(sender: Sender) -> None:
    services = sender.services
    directory, limiter, settings = services.directory, services.limiter, services.settings
    user = (await policy.check_sender(directory, await sender.credential(), None)).user

    async def check(rcpts: list[str]) -> None:
        await policy.check_recipients(directory, limiter, settings, user, rcpts)

    await check(["a@example.net", "b@example.net", "c@example.net"])
    with refused(Reason.TOO_MANY_RECIPIENTS, str(MAX_RCPTS)):
        await check([f"r{i}@example.net" for i in range(MAX_RCPTS + 1)])
    await sender.user("emailgateway.addsuppression", EmailAddress="x@example.net")
    await sender.user("emailgateway.addsuppression", EmailAddress="y@example.net")
    # Every suppressed address is named; syntax comes first.
    with refused(Reason.RECIPIENT_SUPPRESSED, "x@example.net, y@example.net"):
        await check(["x@example.net", "ok@example.net", "y@example.net"])
    with refused(Reason.RECIPIENT_INVALID, "bad@"):
        await check(["x@example.net", "bad@"])


# -- DATA -------------------------------------------------------------------------------------


def message(frm: str = "App <app@example.com>", body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return f"From: {frm}\r\nTo: r@example.net\r\nSubject: s\r\n{extra}\r\n{body}".encode()


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (message(body="y" * 2001), Reason.MESSAGE_TOO_BIG, ""),
        (message(body="nul \x00\r\n"), Reason.MESSAGE_MALFORMED, "NUL character"),
        (message(body="x" * 101 + "\r\n"), Reason.LINE_TOO_LONG, "100"),
        (b"not a header\r\n\r\nx\r\n", Reason.MESSAGE_MALFORMED, "invalid header line"),
        (b" folded first\r\n\r\nx\r\n", Reason.MESSAGE_MALFORMED, None),
        (message(frm="not an address"), Reason.MESSAGE_MALFORMED, "unparseable From header"),
        (b"To: r@example.net\r\n\r\nx\r\n", Reason.FROM_COUNT, ""),
        (message(extra="From: b@example.com\r\n"), Reason.FROM_COUNT, ""),
        (message(frm="a@example.com, b@example.com"), Reason.FROM_COUNT, ""),
        (message(frm="app@elsewhere.com"), Reason.FROM_NOT_IN_DOMAIN, "example.com"),
        (message(frm="app@notexample.com"), Reason.FROM_NOT_IN_DOMAIN, "example.com"),
    ],
)
def test_content_refusals(
    settings: config.Settings, data: bytes, reason: Reason, detail: str | None
) -> None:
    with refused(reason, detail):
        policy.check_content(settings, data, "example.com")


def test_content_accepted_is_normalized_and_parsed(settings: config.Settings) -> None:
    data, parsed = policy.check_content(
        settings, message(frm="News <n@mail.example.com>", body="a\nb\rc\r\n"), "example.com"
    )
    assert data.endswith(b"\r\n\r\na\r\nb\r\nc\r\n")
    assert parsed.first_text(b"from") == "News <n@mail.example.com>"
    assert parsed.first_text(b"subject") == "s"


# -- the front ends' tables -------------------------------------------------------------------


def test_every_front_end_answers_every_reason() -> None:
    for table in (replies.REFUSALS, refusals.SEND_EMAIL, refusals.SMTP_RELAY):
        assert set(table) == set(Reason), table
    for reason in Reason:
        reply = replies.refusal(Refused(reason, "x"))
        assert "{" not in reply and reply[:3].isdigit() and reply[3] == " "
        # RFC 3463: the enhanced code's class is the reply's class.
        assert reply[4] == reply[0] and reply[5] == ".", reply
        assert refusals.send_error(Refused(reason, "x")).status in (400, 401, 403, 422, 429)
        assert "SMTPResponse" in refusals.relay_error(Refused(reason, "x")).extra


def test_front_end_texts_use_the_detail() -> None:
    exc = Refused(Reason.LINE_TOO_LONG, "998")
    assert replies.refusal(exc) == replies.LINE_TOO_LONG.format(detail="998")
    assert refusals.send_problem(exc) == (41, "Message refused: " + replies.refusal(exc))
    err = refusals.relay_error(Refused(Reason.RECIPIENT_INVALID, "a\r\nb@x"))
    assert err.body("legacy") == {
        "Success": False,
        "ErrorCode": 9,
        "ErrorText": "Invalid recipient a b@x",
        "SMTPResponse": replies.RCPT_BAD_SYNTAX,
    }
    err = refusals.relay_error(Refused(Reason.CREDENTIAL_INVALID))
    assert (err.code, err.extra) == (3, {"SMTPResponse": replies.RELAY_AUTH_ERROR})
