"""The policy of each SMTP stage, in CONTRACT.md's order. Every failure raises Reject(reply).

MAIL: credential still valid -> user may send -> sender domain owned -> sender domain Enabled
RCPT: syntax -> suppression (account, then global) -> recipients per transaction -> send limit
DATA: size -> line endings and NULs -> line length -> exactly one From, in the sender domain

Lookups go through the Directory (cached), so a check costs microseconds after the first miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.addresses import domain_of, has_control_chars, is_same_or_subdomain, is_valid_email
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
from relay.ratelimit import RateLimiter
from relay.secrets import verify_secret
from relay.smtp import replies
from relay.smtp.errors import Reject

SEND_WINDOW = 3600.0


def send_limit_key(user_id: int) -> str:
    return f"send:{user_id}"


@dataclass(frozen=True, slots=True)
class Sender:
    """Who is sending in this transaction, established at MAIL."""

    credential: CredentialView
    user: UserView
    domain: DomainView
    mail_from: str


async def authenticate(directory: Directory, username: str, password: str) -> CredentialView:
    cred = await directory.credential(username)
    if cred is None or not verify_secret(password, cred.password_hash):
        raise Reject(replies.AUTH_INVALID)
    return cred


async def check_mail(directory: Directory, session_cred: CredentialView, mail_from: str) -> Sender:
    # The credential may have been deleted or its password reset since AUTH: it stops working
    # at once (the admin app invalidated the cache on every node).
    current = await directory.credential(session_cred.username)
    if current is None or current.password_hash != session_cred.password_hash:
        raise Reject(replies.AUTH_INVALID)
    user = await directory.user(current.user_id)
    if user is None or not user.may_send:
        raise Reject(replies.ACCOUNT_BLOCKED)
    if has_control_chars(mail_from) or not is_valid_email(mail_from):
        # The null sender (bounces) has no business on a submission port either.
        raise Reject(
            replies.SENDER_NOT_OWNED if mail_from in ("", "<>") else replies.SENDER_BAD_SYNTAX
        )
    domain = await directory.domain(current.domain_id)
    if domain is None or not is_same_or_subdomain(domain_of(mail_from), domain.name):
        raise Reject(replies.SENDER_NOT_OWNED)
    if domain.status != "Enabled":
        raise Reject(replies.DOMAIN_NOT_ENABLED)
    return Sender(current, user, domain, mail_from)


async def check_rcpt(
    directory: Directory,
    limiter: RateLimiter,
    settings: Settings,
    sender: Sender,
    rcpt: str,
    accepted_so_far: int,
) -> None:
    if has_control_chars(rcpt) or not is_valid_email(rcpt):
        raise Reject(replies.RCPT_BAD_SYNTAX)
    if await directory.suppression(sender.user.id, rcpt) is not None:
        raise Reject(replies.RCPT_SUPPRESSED)
    # RFC 5321 4.5.3.1.8: 452 for too many recipients; the client sends the rest later.
    if accepted_so_far >= settings.smtp.max_recipients:
        raise Reject(replies.TOO_MANY_RCPTS)
    limit = sender.user.send_limit_per_hour
    if limit:
        sent = await limiter.count(send_limit_key(sender.user.id), SEND_WINDOW)
        if sent + accepted_so_far + 1 > limit:
            raise Reject(replies.SEND_LIMIT)


def check_content(
    settings: Settings, data: bytes, sender_domain: str
) -> tuple[bytes, ParsedMessage]:
    """The message as it will be signed (CRLF only), parsed; or Reject."""
    if len(data) > settings.smtp.max_message_size:
        raise Reject(replies.TOO_BIG)
    if b"\x00" in data:
        raise Reject(replies.MALFORMED.format(why="NUL character"))
    data = normalize_line_endings(data)
    if has_line_longer_than(data, settings.smtp.max_line_length):
        raise Reject(replies.LINE_TOO_LONG.format(limit=settings.smtp.max_line_length))
    try:
        msg = parse(data)
        senders = from_addresses(msg)
    except MalformedMessage as exc:
        raise Reject(replies.MALFORMED.format(why=str(exc))) from None
    if len(msg.values(b"from")) != 1 or len(senders) != 1:
        raise Reject(replies.FROM_COUNT)
    if not is_same_or_subdomain(domain_of(senders[0]), sender_domain):
        raise Reject(replies.FROM_DOMAIN)
    return data, msg
