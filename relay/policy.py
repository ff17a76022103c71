"""The sending policy: every check a message passes before it is accepted, for every front end.

The SMTP handler, ``/api/v1/email`` and ``emailgateway.smtprelay`` call these functions and
never repeat them. A refusal raises ``Refused(reason, detail)``; each front end turns the reason
into its own answer in one table: ``relay.smtp.replies.refusal`` (the SMTP reply),
``relay.admin.refusals`` (the send API's code and HTTP status, smtprelay's code and
SMTPResponse). Nothing here knows how a front end answers.

In SMTP order:

- AUTH: the credential exists, its password matches, it is Enabled.
- MAIL: the credential is still the one authenticated -> the user exists, is Enabled, trusted
  and verified -> the sender domain exists and is Enabled -> the sender address is valid and in
  the sender domain or a subdomain of it. A declared SIZE is checked against the limit.
- RCPT: syntax -> suppression (the account's list, then the global one) -> recipients per
  transaction -> the account's hourly send limit (reserved: counted at once, given back if the
  message is not committed).
- DATA: size -> NUL -> line endings (normalized, never refused) -> line length -> a parseable
  header block -> exactly one From, with one mailbox -> whose domain is a domain name
  (MESSAGE_MALFORMED otherwise) -> in the sender domain.

Lookups go through the Directory (cached), so a check costs a dictionary lookup after the first
miss; the only extra lookups are on refusal paths.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from relay.addresses import (
    ascii_domain,
    domain_of,
    is_same_or_subdomain,
    is_valid_email,
    is_valid_utf8_email,
)
from relay.config import Settings
from relay.directory import CredentialView, Directory, DomainView, UserView
from relay.message import (
    MalformedMessage,
    ParsedMessage,
    from_addresses,
    has_line_longer_than,
    normalize_line_endings,
    parse,
)
from relay.ratelimit import SEND_WINDOW, RateLimiter, Reservation, send_limit_key
from relay.secrets import verify_secret


class Reason(enum.Enum):
    """Why the policy refused. The value is stable: logs and front-end tables use it."""

    # credential and account
    CREDENTIAL_INVALID = "credential_invalid"  # unknown, wrong password, reset, deleted
    USER_DELETED = "user_deleted"  # the account no longer exists
    USER_DISABLED = "user_disabled"  # not Enabled, or not trusted
    USER_NOT_VERIFIED = "user_not_verified"
    DOMAIN_DELETED = "domain_deleted"  # the sender domain no longer exists
    DOMAIN_NOT_ENABLED = "domain_not_enabled"  # Approval Pending or Disabled
    # envelope
    SENDER_INVALID = "sender_invalid"  # envelope sender syntax
    SENDER_NOT_OWNED = "sender_not_owned"  # not in the sender domain (detail: the domain)
    RECIPIENT_INVALID = "recipient_invalid"  # recipient syntax (detail: the address)
    RECIPIENT_SUPPRESSED = "recipient_suppressed"  # detail: the suppressed addresses
    TOO_MANY_RECIPIENTS = "too_many_recipients"  # detail: the limit
    SEND_LIMIT = "send_limit"  # the account's SendLimitPerHour reached
    # content
    MESSAGE_TOO_BIG = "message_too_big"
    MESSAGE_MALFORMED = "message_malformed"  # NUL, unparseable headers (detail: what)
    LINE_TOO_LONG = "line_too_long"  # detail: the limit in octets
    FROM_COUNT = "from_count"  # not exactly one From header with one mailbox
    FROM_NOT_IN_DOMAIN = "from_not_in_domain"


class Refused(Exception):
    """A policy decision: the message (or this step of it) may not go on, because ``reason``.
    ``detail`` is for the front end's text (an address, a limit); never secret."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason.value, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Sender:
    """Who is sending in this transaction, established at MAIL."""

    credential: CredentialView
    user: UserView
    domain: DomainView
    mail_from: str


# -- AUTH and MAIL ----------------------------------------------------------------------------


async def authenticate(directory: Directory, username: str, password: str) -> CredentialView:
    """The Enabled credential with this username and password. A right password for a
    credential retired together with its domain (emailgateway.deletedomain) is refused as
    DOMAIN_DELETED, so a front end can say why; anything else as CREDENTIAL_INVALID."""
    cred = await directory.credential(username, retired=True)
    if cred is None or not verify_secret(password, cred.password_hash):
        raise Refused(Reason.CREDENTIAL_INVALID)
    if cred.status != "Enabled":
        raise Refused(await _retired(directory, cred))
    return cred


async def check_sender(
    directory: Directory,
    session_cred: CredentialView,
    mail_from: str | None,
    *,
    utf8: bool = False,
) -> Sender:
    """MAIL. ``mail_from`` None: no envelope sender given (smtprelay without MailFrom); the
    account and domain are still checked. ``utf8``: the transaction declared SMTPUTF8, so the
    address may be internationalized (RFC 6531)."""
    # The credential may have been deleted or its password reset since AUTH: it stops working
    # at once (the admin app invalidated the cache on every node).
    current = await directory.credential(session_cred.username, retired=True)
    if current is None or current.password_hash != session_cred.password_hash:
        raise Refused(Reason.CREDENTIAL_INVALID)
    if current.status != "Enabled":
        raise Refused(await _retired(directory, current))
    user = await directory.user(current.user_id)
    domain = await directory.domain(current.domain_id)
    check_account(user, domain)
    assert user is not None and domain is not None
    if mail_from is not None:
        check_sender_address(mail_from, domain.name, utf8=utf8)
    return Sender(current, user, domain, mail_from or "")


async def _retired(directory: Directory, cred: CredentialView) -> Reason:
    """Why a credential is no longer Enabled: its domain was deleted (and its user was not), or
    it was deleted or disabled by itself."""
    user = await directory.user(cred.user_id)
    if user is not None and user.status != "Deleted":
        domain = await directory.domain(cred.domain_id)
        if domain is None or domain.status == "Deleted":
            return Reason.DOMAIN_DELETED
    return Reason.CREDENTIAL_INVALID


def check_account(user: UserView | None, domain: DomainView | None) -> None:
    """The account may send from this sender domain: user first, then domain."""
    if user is None or user.status == "Deleted":
        raise Refused(Reason.USER_DELETED)
    if user.status != "Enabled" or not user.trusted:
        raise Refused(Reason.USER_DISABLED)
    if not user.verified:
        raise Refused(Reason.USER_NOT_VERIFIED)
    if domain is None or domain.status == "Deleted":
        raise Refused(Reason.DOMAIN_DELETED)
    if domain.status != "Enabled":
        raise Refused(Reason.DOMAIN_NOT_ENABLED)


def check_sender_address(mail_from: str, sender_domain: str, *, utf8: bool = False) -> None:
    """The envelope sender (the From address on the send API) is in the sender domain or a
    subdomain of it."""
    if not (is_valid_email(mail_from) or (utf8 and is_valid_utf8_email(mail_from))):
        if mail_from in ("", "<>"):
            # The null sender (bounces) has no business on a submission port either.
            raise Refused(Reason.SENDER_NOT_OWNED, sender_domain)
        raise Refused(Reason.SENDER_INVALID)
    if not is_same_or_subdomain(domain_of(mail_from), sender_domain):
        raise Refused(Reason.SENDER_NOT_OWNED, sender_domain)


def check_size(settings: Settings, size: int) -> None:
    """A size known before the content: SIZE= at MAIL (RFC 1870), or the content's."""
    if size > settings.smtp.max_message_size:
        raise Refused(Reason.MESSAGE_TOO_BIG)


# -- RCPT -------------------------------------------------------------------------------------


def check_recipient_address(rcpt: str) -> None:
    if not is_valid_email(rcpt):
        raise Refused(Reason.RECIPIENT_INVALID, rcpt)


def check_recipient_count(settings: Settings, count: int) -> None:
    """``count`` recipients in one message; RFC 5321 4.5.3.1.8: over the limit is a temporary
    refusal, the client sends the rest in another transaction."""
    if count > settings.smtp.max_recipients:
        raise Refused(Reason.TOO_MANY_RECIPIENTS, str(settings.smtp.max_recipients))


async def check_recipient(
    directory: Directory,
    limiter: RateLimiter,
    settings: Settings,
    user: UserView,
    rcpt: str,
    accepted_so_far: int,
    *,
    utf8: bool = False,
) -> Reservation | None:
    """One RCPT: this recipient after ``accepted_so_far`` accepted in the transaction. With a
    send limit, its reservation: the caller releases it unless the message is committed.
    ``utf8``: the transaction declared SMTPUTF8 (an internationalized address is valid)."""
    if not (is_valid_email(rcpt) or (utf8 and is_valid_utf8_email(rcpt))):
        raise Refused(Reason.RECIPIENT_INVALID, rcpt)
    if await directory.suppression(user.id, rcpt) is not None:
        raise Refused(Reason.RECIPIENT_SUPPRESSED, rcpt)
    if accepted_so_far >= settings.smtp.max_recipients:
        raise Refused(Reason.TOO_MANY_RECIPIENTS, str(settings.smtp.max_recipients))
    # The account's hourly limit (0 = unlimited), reserved: counted now if it fits, in one step
    # for every process and node, so concurrent sessions cannot all take the last unit; the
    # front end gives it back if the message is not committed. Written out here rather than in
    # a helper: no extra await per RCPT.
    limit = user.send_limit_per_hour
    if limit:
        held = await limiter.reserve(send_limit_key(user.id), limit, SEND_WINDOW)
        if held is None:
            raise Refused(Reason.SEND_LIMIT)
        return held
    return None


async def check_recipients(
    directory: Directory,
    limiter: RateLimiter,
    settings: Settings,
    user: UserView,
    rcpts: list[str],
) -> Reservation | None:
    """A whole envelope at once (the HTTP front ends): the same checks as ``check_recipient``
    for every recipient; a suppression refusal names every suppressed address. With a send
    limit, the reservation of all of them: the caller releases it unless the message is
    committed."""
    for rcpt in rcpts:
        check_recipient_address(rcpt)
    suppressed = [r for r in rcpts if await directory.suppression(user.id, r) is not None]
    if suppressed:
        raise Refused(Reason.RECIPIENT_SUPPRESSED, ", ".join(suppressed))
    check_recipient_count(settings, len(rcpts))
    limit = user.send_limit_per_hour
    if limit and rcpts:  # with none (a credential check only) there is nothing to count
        held = await limiter.reserve(send_limit_key(user.id), limit, SEND_WINDOW, len(rcpts))
        if held is None:
            raise Refused(Reason.SEND_LIMIT)
        return held
    return None


# -- DATA -------------------------------------------------------------------------------------

# Content at least this large is checked in a worker thread: normalizing, splitting and parsing
# megabytes (or hundreds of thousands of header lines) would hold the event loop, and with it
# every other session of the process, for that long.
OFF_LOOP_SIZE = 256 * 1024


async def check_message(
    settings: Settings, data: bytes, sender_domain: str
) -> tuple[bytes, ParsedMessage]:
    """``check_content`` for a front end on the event loop: in a thread when ``data`` is
    large."""
    if len(data) >= OFF_LOOP_SIZE:
        return await asyncio.to_thread(check_content, settings, data, sender_domain)
    return check_content(settings, data, sender_domain)


def check_content(
    settings: Settings, data: bytes, sender_domain: str
) -> tuple[bytes, ParsedMessage]:
    """The message as it will be signed (CRLF line endings only), parsed."""
    check_size(settings, len(data))
    if b"\x00" in data:
        raise Refused(Reason.MESSAGE_MALFORMED, "NUL character")
    data = normalize_line_endings(data)
    limit = settings.smtp.max_line_length
    if has_line_longer_than(data, limit):
        raise Refused(Reason.LINE_TOO_LONG, str(limit))
    try:
        msg = parse(data)
        senders = from_addresses(msg)
    except MalformedMessage as exc:
        raise Refused(Reason.MESSAGE_MALFORMED, str(exc)) from None
    if len(msg.values(b"from")) != 1 or len(senders) != 1:
        raise Refused(Reason.FROM_COUNT)
    # RFC 5322 3.4.1: the domain must be one (``example.com...`` is not); an internationalized
    # one is compared in its A-label form, the form sender domains are kept in.
    from_domain = ascii_domain(domain_of(senders[0]))
    if from_domain is None:
        raise Refused(Reason.MESSAGE_MALFORMED, "the From address has no valid domain")
    if not is_same_or_subdomain(from_domain, sender_domain):
        raise Refused(Reason.FROM_NOT_IN_DOMAIN, sender_domain)
    return data, msg
