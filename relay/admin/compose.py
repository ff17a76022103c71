"""The send API's JSON as a MIME message: every field checked (the documents' codes, all
problems reported together), then built.

UTF-8 text goes out quoted-printable, attachments base64, inline images with a Content-ID next
to the HTML. The sending policy's rules (sender domain, recipient cap) come from relay.policy
and their codes from relay.admin.refusals; the rest is field validation of the documents.
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

from relay.addresses import ascii_address, has_control_chars, is_valid_email
from relay.admin.errors import ApiError
from relay.admin.params import Params
from relay.admin.refusals import send_problem
from relay.config import Settings
from relay.policy import Refused, check_recipient_count, check_sender_address

MAX_REPLY_TO = 10
MAX_TAGS = 20
MAX_TAG_LENGTH = 100
# SendAt (scheduled sending): at most this far ahead (what the large gateways allow), and a
# time this little in the past still means "now" (clock skew, a client's own queueing); further
# back it is refused rather than sent late by hours, which is most likely a mistake.
SENDAT_HORIZON = 72 * 3600
SENDAT_PAST_TOLERANCE = 600
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


def clean_text(text: str) -> str:
    """Header text without line breaks or other controls (no header injection)."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


def _mailbox(entry: Any) -> tuple[str, str] | None:
    """(name, email) from {"name", "email"} or a bare address; None if unusable. A domain in
    U-labels becomes its A-label form (the message needs no SMTPUTF8 for it)."""
    if isinstance(entry, str):
        # "Name <address>" or a bare address.
        display, address = parseaddr(entry)
        return clean_text(display), ascii_address((address or entry).strip())
    if isinstance(entry, dict):
        lower = {str(k).lower(): v for k, v in entry.items()}
        email = lower.get("email")
        if not isinstance(email, str) or not email.strip():
            return None
        given = lower.get("name")
        return (clean_text(given) if isinstance(given, str) else ""), ascii_address(email.strip())
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
    # SendAt when it is ahead (Unix time): the recipients become due then; None: now.
    send_at: float | None = None
    # TrackLinks / TrackOpens: override the sender domain's LinkTracking / OpenTracking for
    # this message; None when not given (the domain's option applies).
    track_links: bool | None = None
    track_opens: bool | None = None

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
            problems.add(39, f"Attachment content is not base64: {clean_text(filename)}")
            continue
        ctype = lower.get("type")
        maintype, _, subtype = (ctype if isinstance(ctype, str) else "").partition("/")
        if not (maintype and subtype) or has_control_chars(str(ctype)):
            maintype, subtype = "application", "octet-stream"
        cid = lower.get("contentid")
        cid = clean_text(cid).strip("<>") if isinstance(cid, str) else ""
        inline = str(lower.get("disposition") or "").lower() == "inline" and bool(cid)
        out.append(Attachment(clean_text(filename), data, maintype, subtype, inline, cid))
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
            problems.add(40, f"Invalid custom header: {clean_text(name)[:64]}")
            continue
        out.append((name, clean_text(text)))
    return out


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return []
    tags = [clean_text(str(t))[:MAX_TAG_LENGTH] for t in items if isinstance(t, str | int)]
    return list(dict.fromkeys(t for t in tags if t))[:MAX_TAGS]


def _send_at(p: Params, problems: Problems) -> float | None:
    """SendAt as the time the recipients become due; None for now (absent, 0, or at most
    SENDAT_PAST_TOLERANCE in the past)."""
    try:
        # Unix seconds: wider than an INTEGER column (2038), within what a float holds exactly.
        send_at = p.int("SendAt", lo=0, hi=2**53)
    except ValueError:
        problems.add(42, "Invalid SendAt (a Unix time, in seconds)")
        return None
    if not send_at:
        return None
    now = time.time()
    if send_at < now - SENDAT_PAST_TOLERANCE:
        problems.add(43, f"SendAt is more than {SENDAT_PAST_TOLERANCE // 60} minutes in the past")
    elif send_at > now + SENDAT_HORIZON:
        problems.add(43, f"SendAt is more than {SENDAT_HORIZON // 3600} hours ahead")
    elif send_at > now:
        return float(send_at)
    return None


def parse_email(p: Params, settings: Settings, sender_domain: str) -> Email:
    """Every content check of the document, reported together (codes in document order);
    raises ApiError (HTTP 400) with all of them."""
    problems = Problems()
    raw_from = p.raw("From")
    sender = _mailbox(raw_from) if p.present("From") else None
    if sender is None or not sender[1]:
        sender = None
        problems.add(3, "From parameter is missing or invalid")
    else:
        # The From address is also the envelope sender: the policy's sender rule.
        try:
            check_sender_address(sender[1], sender_domain)
        except Refused as exc:
            problems.add(*send_problem(exc))
    subject = clean_text(p.str("Subject") or "")
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
    limit = settings.smtp.max_recipients
    if len(bcc) > limit:
        problems.add(27, "The number of BCC email addresses exceed the allowed email address count")
    if len(reply_to) > MAX_REPLY_TO:
        problems.add(
            31, "The number of Reply-To email addresses exceed the allowed email address count"
        )
    try:
        check_recipient_count(settings, len(to) + len(cc) + len(bcc))
    except Refused as exc:
        problems.add(*send_problem(exc))
    attachments = _attachments(p.raw("Attachments"), problems)
    headers = _custom_headers(p.raw("Headers"), problems)
    send_at = _send_at(p, problems)
    track: dict[str, bool | None] = {}
    untrue: list[str] = []
    for name in ("TrackLinks", "TrackOpens"):
        try:
            track[name] = p.bool(name)
        except ValueError:
            untrue.append(name)
    if untrue:
        problems.add(44, f"Invalid {' and '.join(untrue)} (true or false)")
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
        send_at=send_at,
        track_links=track.get("TrackLinks"),
        track_opens=track.get("TrackOpens"),
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
