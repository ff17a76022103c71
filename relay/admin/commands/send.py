"""Sending over HTTP (001: POST /api/v1/email) and the SMTP relay contract
(emailgateway.smtprelay).

``/api/v1/email`` builds a MIME message from the JSON fields (UTF-8 text as quoted-printable,
attachments base64, inline images with a Content-ID next to the HTML), then takes exactly the
path an SMTP submission takes (``relay.submit``): the same content checks, Message-ID and Date
when missing, a Received header, the DKIM signature of the sender domain, and the group commit;
it answers only once the message is durably queued. The From address must be in the key's
sender domain (or a subdomain of it); it is also the envelope sender. Recipients are To, CC and
BCC (BCC only in the envelope), at most ``smtp.max_recipients`` in all.

Not in the documents, and numbered after their last code: 39 an attachment without a filename
or whose content is not base64; 40 a custom header with an invalid name, a line break in its
value, or a name the relay sets itself (From, To, Cc, Bcc, Subject, Reply-To, Sender, Received,
Return-Path, DKIM-Signature, MIME-Version, Content-*); 41 a message the content checks refuse
(too large, over-long lines); 42 SendAt in the future (this relay does not schedule). There are
no templates, lists, subscribers or journeys here, so TemplateID, TargetListID, ListID,
SubscriberID, JourneyID and ActionID never name anything that exists (codes 15, 16, 35-38).
TrackLinks and TrackOpens are accepted and ignored: the relay does not rewrite content.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr
from typing import Any

import structlog
from aiohttp import web

from relay.addresses import domain_of, has_control_chars, is_same_or_subdomain, is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.senderkey import sender_scope
from relay.checks import SEND_WINDOW, check_content, send_limit_key
from relay.message import from_addresses
from relay.secrets import verify_secret
from relay.smtp import replies
from relay.smtp.errors import Reject
from relay.store.db import StorageUnavailable
from relay.submit import Origin, Submitter

SUBMITTER = web.AppKey("submitter", Submitter)
log = structlog.get_logger("relay.admin.send")

MAX_REPLY_TO = 10
MAX_TAGS = 20
MAX_TAG_LENGTH = 100
SENDAT_SLACK = 60.0
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 3.6.8 ftext
_RESERVED_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "sender",
    "received",
    "return-path",
    "dkim-signature",
    "mime-version",
}
_CONTEXT_IDS = (
    ("TemplateID", 15, "Invalid TemplateID"),
    ("TargetListID", 16, "Invalid TargetListID"),
    ("ListID", 35, "Invalid ListID"),
    ("SubscriberID", 36, "Invalid SubscriberID"),
    ("JourneyID", 37, "Invalid JourneyID"),
    ("ActionID", 38, "Invalid ActionID"),
)


class Problems:
    """Validation failures collected in check order; the v1 error body lists them all."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, code: int, text: str) -> None:
        if all(c != code for c, _ in self.items):
            self.items.append((code, text))

    def raise_if_any(self, status: int = 400) -> None:
        if self.items:
            raise ApiError([c for c, _ in self.items], [m for _, m in self.items], status=status)


def _clean(text: str) -> str:
    """Header text without line breaks or other controls (no header injection)."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


def _mailbox(entry: Any) -> tuple[str, str] | None:
    """(name, email) from {"name", "email"} or a bare address; None if unusable."""
    if isinstance(entry, str):
        # "Name <address>" or a bare address.
        display, address = parseaddr(entry)
        return _clean(display), (address or entry).strip()
    if isinstance(entry, dict):
        lower = {str(k).lower(): v for k, v in entry.items()}
        email = lower.get("email")
        if not isinstance(email, str) or not email.strip():
            return None
        given = lower.get("name")
        return (_clean(given) if isinstance(given, str) else ""), email.strip()
    return None


def _mailboxes(
    value: Any,
    problems: Problems,
    *,
    missing: tuple[int, str],
    invalid: tuple[int, str],
    not_list: tuple[int, str] | None = None,
) -> list[tuple[str, str]]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, dict | str):
        if not_list is not None:
            problems.add(*not_list)
            return []
        value = [value]
    if not isinstance(value, list):
        problems.add(*(not_list or missing))
        return []
    out = []
    for entry in value:
        box = _mailbox(entry)
        if box is None:
            problems.add(*missing)
        elif not is_valid_email(box[1]):
            problems.add(*invalid)
        else:
            out.append(box)
    return out


@dataclass
class Attachment:
    filename: str
    data: bytes
    maintype: str
    subtype: str
    inline: bool
    content_id: str


@dataclass
class Email:
    sender: tuple[str, str]
    subject: str
    html: str
    plain: str
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    attachments: list[Attachment]
    tags: list[str] = field(default_factory=list)

    @property
    def recipients(self) -> list[str]:
        seen: dict[str, str] = {}
        for _, addr in self.to + self.cc + self.bcc:
            seen.setdefault(addr.lower(), addr)
        return list(seen.values())


def _attachments(value: Any, problems: Problems) -> list[Attachment]:
    if value is None or value == "" or value == []:
        return []
    if not isinstance(value, list):
        problems.add(39, "Attachments must be an array")
        return []
    out = []
    for entry in value:
        lower = {str(k).lower(): v for k, v in entry.items()} if isinstance(entry, dict) else {}
        filename, content = lower.get("filename"), lower.get("content")
        if not isinstance(filename, str) or not filename.strip() or not isinstance(content, str):
            problems.add(39, "Attachment filename or content is missing")
            continue
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            problems.add(39, f"Attachment content is not base64: {_clean(filename)}")
            continue
        ctype = lower.get("type")
        maintype, _, subtype = (ctype if isinstance(ctype, str) else "").partition("/")
        if not (maintype and subtype) or has_control_chars(str(ctype)):
            maintype, subtype = "application", "octet-stream"
        cid = lower.get("contentid")
        cid = _clean(cid).strip("<>") if isinstance(cid, str) else ""
        inline = str(lower.get("disposition") or "").lower() == "inline" and bool(cid)
        out.append(Attachment(_clean(filename), data, maintype, subtype, inline, cid))
    return out


def _custom_headers(value: Any, problems: Problems) -> list[tuple[str, str]]:
    if value is None or value == "" or value == {} or value == []:
        return []
    if not isinstance(value, dict):
        problems.add(40, "Headers must be an object of name: value")
        return []
    out = []
    for name, raw in value.items():
        name = str(name)
        text = raw if isinstance(raw, str) else str(raw)
        lname = name.lower()
        if (
            not _FIELD_NAME.match(name)
            or lname in _RESERVED_HEADERS
            or lname.startswith("content-")
            or "\r" in text
            or "\n" in text
        ):
            problems.add(40, f"Invalid custom header: {_clean(name)[:64]}")
            continue
        out.append((name, _clean(text)))
    return out


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return []
    tags = [_clean(str(t))[:MAX_TAG_LENGTH] for t in items if isinstance(t, str | int)]
    return list(dict.fromkeys(t for t in tags if t))[:MAX_TAGS]


def parse_email(call: Call, sender_domain: str) -> Email:
    """Every content check of the document, reported together (codes in document order)."""
    p = call.params
    problems = Problems()
    raw_from = p.raw("From")
    sender = _mailbox(raw_from) if p.present("From") else None
    if sender is None or not sender[1]:
        sender = None
        problems.add(3, "From parameter is missing or invalid")
    elif not is_valid_email(sender[1]):
        problems.add(23, "Invalid from email address format")
    elif not is_same_or_subdomain(domain_of(sender[1]), sender_domain):
        problems.add(3, f"From email address must be in the sender domain {sender_domain}")
    subject = _clean(p.str("Subject") or "")
    to_given = p.present("To")
    # 001: 8 is "Missing Subject or To email address"; 002 gives a missing To 20 as well.
    absent = [
        n for n, gone in (("Subject", not subject), ("To email address", not to_given)) if gone
    ]
    if absent:
        problems.add(8, "Missing " + " and ".join(absent))
    content_type = (p.str("ContentType") or "").lower()
    html = p.raw("HTMLContent")
    plain = p.raw("PlainContent")
    html = html if isinstance(html, str) else ""
    plain = plain if isinstance(plain, str) else ""
    if not content_type:
        problems.add(9, "Missing ContentType")
    elif content_type not in ("html", "plain"):
        problems.add(9, "Invalid ContentType (html or plain)")
    elif content_type == "html" and not html.strip():
        problems.add(10, "Missing HTMLContent")
    elif content_type == "plain" and not plain.strip():
        problems.add(11, "Missing PlainContent")
    for name, code, text in _CONTEXT_IDS:
        if p.present(name) and str(p.raw(name)).strip() not in ("0",):
            problems.add(code, text)
    to = _mailboxes(
        p.raw("To"),
        problems,
        missing=(18, "Recipient name or email address is missing"),
        invalid=(19, "Recipient email address is invalid."),
    )
    if not to_given or (not to and not any(c in (18, 19) for c, _ in problems.items)):
        problems.add(20, "There is no recipient set for the email.")
    cc = _mailboxes(
        p.raw("CC"),
        problems,
        missing=(21, "CC name or email address is missing"),
        invalid=(22, "CC email address is invalid."),
    )
    bcc = _mailboxes(
        p.raw("BCC"),
        problems,
        missing=(25, "BCC name or email address is missing"),
        invalid=(26, "BCC email address is invalid."),
        not_list=(24, "BCC email addresses must be set as an array"),
    )
    reply_to = _mailboxes(
        p.raw("ReplyTo"),
        problems,
        missing=(29, "Reply-To name or email address is missing"),
        invalid=(30, "Reply-To email address is invalid."),
        not_list=(28, "Reply-To email addresses must be set as an array"),
    )
    limit = call.services.settings.smtp.max_recipients
    if len(bcc) > limit:
        problems.add(27, "The number of BCC email addresses exceed the allowed email address count")
    if len(reply_to) > MAX_REPLY_TO:
        problems.add(
            31, "The number of Reply-To email addresses exceed the allowed email address count"
        )
    if len(to) + len(cc) + len(bcc) > limit:
        problems.add(20, f"Recipient count exceeds the limit of {limit}")
    attachments = _attachments(p.raw("Attachments"), problems)
    headers = _custom_headers(p.raw("Headers"), problems)
    try:
        send_at = p.int("SendAt")
    except ValueError:
        send_at = None
    if send_at and send_at > time.time() + SENDAT_SLACK:
        problems.add(42, "SendAt: scheduled sending is not supported by this relay")
    problems.items.sort(key=lambda item: item[0])
    problems.raise_if_any()
    assert sender is not None
    return Email(
        sender=sender,
        subject=subject,
        html=html if content_type == "html" else "",
        plain=plain,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        headers=headers,
        attachments=attachments,
        tags=_tags(p.raw("Tags")),
    )


def _address(box: tuple[str, str]) -> Address:
    name, email = box
    local, _, domain = email.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def build_mime(mail: Email) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(mail.sender)
    msg["To"] = [_address(b) for b in mail.to]
    if mail.cc:
        msg["Cc"] = [_address(b) for b in mail.cc]
    if mail.reply_to:
        msg["Reply-To"] = [_address(b) for b in mail.reply_to]
    msg["Subject"] = mail.subject
    for name, value in mail.headers:
        msg[name] = value
    # Quoted-printable keeps every line 7-bit and under 78 characters: no 8BITMIME needed
    # downstream, and nothing for a relay on the way to rewrite under the DKIM signature.
    html_part: EmailMessage = msg
    if mail.html and mail.plain:
        msg.set_content(mail.plain, cte="quoted-printable")
        msg.add_alternative(mail.html, subtype="html", cte="quoted-printable")
        alternative = msg.get_payload()[1]  # type: ignore[index]
        assert isinstance(alternative, EmailMessage)
        html_part = alternative
    elif mail.html:
        msg.set_content(mail.html, subtype="html", cte="quoted-printable")
    else:
        msg.set_content(mail.plain, cte="quoted-printable")
    for a in mail.attachments:
        if a.inline and mail.html:
            html_part.add_related(
                a.data,
                a.maintype,
                a.subtype,
                cid=f"<{a.content_id}>",
                filename=a.filename,
                disposition="inline",
            )
    for a in mail.attachments:
        if not (a.inline and mail.html):
            msg.add_attachment(a.data, a.maintype, a.subtype, filename=a.filename)
    return msg.as_bytes(policy=SMTP)


def _submitter(call: Call) -> Submitter:
    submitter = call.request.app.get(SUBMITTER)
    if submitter is None:
        raise ApiError(
            99996,
            "This node does not accept mail (no SMTP submission service is running)",
            status=503,
        )
    return submitter


@command(
    "emailgateway.sendemail.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("POST", "/api/v1/email"),),
    missing_key=1,
)
async def send_email(call: Call) -> dict[str, Any]:
    """Send one email from the API key's sender domain; answers with its MessageID once it is
    queued (signed and durably stored, like a 250 over SMTP).

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.
        Subject (String, required): subject line.
        ContentType (String, required): html or plain.
        HTMLContent (String, conditional): required when ContentType is html.
        PlainContent (String, conditional): required when ContentType is plain; with html, the
            plain-text alternative.
        From (Object, required): {"name", "email"}; the email must be in the sender domain.
        To (Array, required): [{"name", "email"}].
        CC (Array): [{"name", "email"}].
        BCC (Array): [{"name", "email"}], envelope only.
        ReplyTo (Array): [{"name", "email"}], at most 10.
        Tags (Array): strings, for per-tag statistics (domainstats TagStats).
        Headers (Object): custom headers, name: value.
        TrackLinks (String): accepted, ignored.
        TrackOpens (String): accepted, ignored.
        SendAt (Integer): Unix time; only now or the past is accepted.
        Attachments (Array): [{"filename", "content" (base64), "type", "disposition",
            "contentid"}]; inline with a contentid goes next to the HTML.
        TemplateID (Integer): no templates exist here.
        TargetListID (Integer): no lists exist here.
        ListID, SubscriberID, JourneyID, ActionID (Integer): none exist here.

    Errors:
        1: Missing SenderAPIKey
        2: Invalid DomainID or invalid user account
        3: From parameter is missing or invalid
        8: Missing Subject or To email address
        9: Missing ContentType
        10: Missing HTMLContent
        11: Missing PlainContent
        12: Invalid or deactivated user account
        13: Invalid SenderAPIKey
        14: Email address is in the suppression list
        15: Invalid TemplateID
        16: Invalid TargetListID
        17: Email sending limit reached
        18: Recipient name or email address is missing
        19: Recipient email address is invalid
        20: There is no recipient set or count exceeds limit
        21: CC name or email address is missing
        22: CC email address is invalid
        23: Invalid from email address format
        24: BCC email addresses must be set as an array
        25: BCC name or email address is missing
        26: BCC email address is invalid
        27: BCC count exceeds limit
        28: Reply-To email addresses must be set as an array
        29: Reply-To name or email address is missing
        30: Reply-To email address is invalid
        31: Reply-To count exceeds limit
        32: Domain is not activated
        34: User account is not verified
        35: Invalid ListID
        36: Invalid SubscriberID
        37: Invalid JourneyID
        38: Invalid ActionID
        39: Invalid attachment (not in the documents)
        40: Invalid custom header (not in the documents)
        41: Message refused by the content checks (not in the documents)
        42: SendAt in the future: scheduling is not supported (not in the documents)
        429: Email send rate limit exceeded
    """
    scope = await sender_scope(
        call,
        ApiError(2, "Invalid DomainID or invalid user account", status=403),
        enabled_only=False,
    )
    user, domain = scope.user, scope.domain
    if user.status != "Enabled" or not user.trusted:
        raise ApiError(12, "Invalid or deactivated user account", status=403)
    if not user.verified:
        raise ApiError(34, "User account is not verified", status=403)
    if domain.status != "Enabled":
        raise ApiError(32, "Domain is not activated", status=403)
    mail = parse_email(call, domain.name)
    services = call.services
    recipients = mail.recipients
    suppressed = [r for r in recipients if await services.directory.suppression(user.id, r)]
    if suppressed:
        raise ApiError(
            14,
            "Email address is in the suppression list. Email delivery is blocked: "
            + ", ".join(suppressed),
            status=422,
        )
    if user.send_limit_per_hour:
        sent = await services.limiter.count(send_limit_key(user.id), SEND_WINDOW)
        if sent + len(recipients) > user.send_limit_per_hour:
            raise ApiError(17, "Email sending limit reached", status=429)
    submitter = _submitter(call)
    try:
        _data, message = check_content(services.settings, build_mime(mail), domain.name)
    except Reject as exc:
        raise ApiError(41, f"Message refused: {exc.reply}", status=422) from None
    try:
        queue_id = await submitter.accept(
            user=user,
            domain=domain,
            mail_from=mail.sender[1],
            recipients=recipients,
            message=message,
            origin=Origin(
                source="api",
                client_ip=call.request.remote or "",
                helo="api",
                tls=None,
                authenticated=True,
                api_key_id=scope.api_key_id,
            ),
            tags=mail.tags,
        )
    except StorageUnavailable:
        raise ApiError(99996, "Temporary failure, please try again later", status=503) from None
    return {"MessageID": queue_id}


def _relay_error(code: int, text: str, reply: str) -> ApiError:
    return ApiError(code, text, extra={"SMTPResponse": reply})


@command("emailgateway.smtprelay", auth="admin")
async def smtp_relay(call: Call) -> dict[str, Any]:
    """The SMTP relay contract: check a credential pair and, optionally, an envelope and a
    raw message against the relay's policy; with RawEmail, queue the message exactly as an
    SMTP submission would be (DKIM-signed, committed before the answer). ``SMTPResponse`` is
    the SMTP reply the relay would give.

    Parameters:
        SMTPUsername (String, required): SMTP username.
        SMTPPassword (String, required): SMTP password.
        UUID (String): the caller's message id (logged; the queue assigns its own).
        MailFrom (String): envelope sender; must be in the credential's sender domain.
        RcptTo (String): comma-separated envelope recipients; required with RawEmail.
        Subject (String): informational.
        RawEmail (String): the message (RFC 5322); queued when given.

    Errors:
        0: Success
        1: Missing SMTPUsername
        2: Missing SMTPPassword
        3: Invalid SMTP credentials
        4: Invalid sender domain
        5: Sender domain is not active
        6: Invalid user account
        7: User is not trusted or not enabled
        8: Recipient email address is suppressed
        9: Message refused (content checks, recipients or send limit; not in the documents)
    """
    p = call.params
    username, password = p.str("SMTPUsername") or "", p.str("SMTPPassword") or ""
    if not username:
        raise _relay_error(1, "Missing SMTPUsername", replies.AUTH_INVALID)
    if not password:
        raise _relay_error(2, "Missing SMTPPassword", replies.AUTH_INVALID)
    directory = call.services.directory
    cred = await directory.credential(username)
    if cred is None or not verify_secret(password, cred.password_hash):
        raise _relay_error(3, "Invalid SMTP credentials", "500 5.0.0 AUTH ERROR")
    user = await directory.user(cred.user_id)
    if user is None or user.status == "Deleted":
        raise _relay_error(6, "Invalid user account", replies.ACCOUNT_BLOCKED)
    if not user.may_send:
        raise _relay_error(7, "User is not trusted or not enabled", replies.ACCOUNT_BLOCKED)
    domain = await directory.domain(cred.domain_id)
    if domain is None or domain.status == "Deleted":
        raise _relay_error(4, "Invalid sender domain", replies.SENDER_NOT_OWNED)
    mail_from = p.str("MailFrom") or ""
    if mail_from and (
        not is_valid_email(mail_from) or not is_same_or_subdomain(domain_of(mail_from), domain.name)
    ):
        raise _relay_error(4, "Invalid sender domain", replies.SENDER_NOT_OWNED)
    if domain.status != "Enabled":
        raise _relay_error(5, "Sender domain is not active", replies.DOMAIN_NOT_ENABLED)
    recipients = [r.strip() for r in (p.str("RcptTo") or "").split(",") if r.strip()]
    for rcpt in recipients:
        if not is_valid_email(rcpt):
            raise _relay_error(9, f"Invalid recipient {_clean(rcpt)}", replies.RCPT_BAD_SYNTAX)
        if await directory.suppression(user.id, rcpt) is not None:
            raise _relay_error(8, "Recipient email address is suppressed", replies.RCPT_SUPPRESSED)
    result: dict[str, Any] = {"SMTPUsername": username, "SMTPPassword": password}
    raw = p.raw("RawEmail")
    if not raw:
        return ok(**result)
    if not recipients:
        raise _relay_error(9, "RcptTo is required with RawEmail", NO_RECIPIENTS)
    limit = user.send_limit_per_hour
    if limit:
        sent = await call.services.limiter.count(send_limit_key(user.id), SEND_WINDOW)
        if sent + len(recipients) > limit:
            raise _relay_error(9, "Send limit of the account reached", replies.SEND_LIMIT)
    submitter = _submitter(call)
    try:
        _data, message = check_content(
            call.services.settings, str(raw).encode("utf-8"), domain.name
        )
    except Reject as exc:
        raise _relay_error(9, "Message refused", exc.reply) from None
    sender = mail_from or from_addresses(message)[0]
    try:
        queue_id = await submitter.accept(
            user=user,
            domain=domain,
            mail_from=sender,
            recipients=recipients,
            message=message,
            origin=Origin(
                source="api",
                client_ip=call.request.remote or "",
                helo="smtprelay",
                credential_id=cred.id,
            ),
        )
    except StorageUnavailable:
        raise _relay_error(99996, "Temporary failure", replies.TEMPORARY) from None
    log.info("smtprelay queued", uuid=_clean(p.str("UUID") or "")[:64], queue_id=queue_id)
    return ok(SMTPResponse=replies.QUEUED.format(id=queue_id), **result)
