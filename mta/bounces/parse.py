"""What a report that came back says: delivery status notifications and abuse reports.

Built on the standard library's email package (no maintained Python library parses DSNs into
status, diagnostic and category: flufl.bounce finds addresses only). Shapes understood:

- RFC 3464 DSNs: ``multipart/report; report-type=delivery-status`` with a
  ``message/delivery-status`` part (Postfix, Exim with its DSN option, Sendmail, Exchange and
  Outlook.com, Gmail, Yahoo, Amazon SES, ...), and RFC 6533's ``message/global-delivery-status``.
- Bare-text bounces: a human-readable explanation, often with ``X-Failed-Recipients``, and the
  returned message or its headers after a separator line (Exim's default, qmail, older Gmail
  and Exchange, many appliances). The SMTP reply quoted in the text gives status and
  diagnostic; its wording says failed or delayed.
- RFC 5965 ARF feedback reports: ``multipart/report; report-type=feedback-report`` with a
  ``message/feedback-report`` part (Yahoo, AOL, Microsoft's JMRP today, Abusix, ...), and
  Microsoft's older JMRP shape: ``multipart/mixed`` around the complained-about message,
  which carries ``X-HmXmrOriginalRecipient``.
- Automatic replies (RFC 3834 ``Auto-Submitted``, out-of-office), read receipts (RFC 8098)
  and success notices, which say nothing about delivery failure: ``ignored``.

``parse_report`` never raises: whatever it cannot read is ``unparsed``, with why.
"""

from __future__ import annotations

import email.policy
import html
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser, HeaderParser

from mta.bounces import classify

DSN = "dsn"
TEXT_BOUNCE = "text-bounce"
ARF = "arf"
IGNORED = "ignored"
UNPARSED = "unparsed"

# How much human-readable text is searched: a bounce's explanation is short.
_TEXT_LIMIT = 64 * 1024
# Diagnostics and field values kept (the whole reply, not a novel).
_VALUE_LIMIT = 1000
_PARSER = BytesParser(policy=email.policy.compat32)


@dataclass(slots=True)
class RecipientStatus:
    """One recipient's block of a DSN (RFC 3464 2.3), or what a text bounce says."""

    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # "5.1.1"
    diagnostic: str = ""  # the remote reply, e.g. "550 5.1.1 <x@example.net>: user unknown"
    final_recipient: str = ""
    original_recipient: str = ""
    remote_mta: str = ""

    def category(self, text: str = "") -> str:
        """Why it failed (``classify``); ``text``: the report's explanation, for when the
        status and diagnostic say too little."""
        return classify.categorize(self.status, self.diagnostic, text)

    def addresses(self) -> set[str]:
        return {a.lower() for a in (self.final_recipient, self.original_recipient) if a}


@dataclass(slots=True)
class Complaint:
    """An abuse report (RFC 5965 3.1/3.2 fields)."""

    feedback_type: str  # abuse | fraud | virus | other | not-spam | auth-failure | opt-out ...
    user_agent: str = ""
    original_mail_from: str = ""
    original_rcpt_to: list[str] = field(default_factory=list)
    source_ip: str = ""
    arrival_date: str = ""
    reported_domain: str = ""


@dataclass(slots=True)
class Report:
    kind: str  # DSN | TEXT_BOUNCE | ARF | IGNORED | UNPARSED
    statuses: list[RecipientStatus] = field(default_factory=list)
    complaint: Complaint | None = None
    reporting_mta: str = ""
    report_id: str = ""  # the report's own Message-ID: the same report sent twice
    why: str = ""  # IGNORED / UNPARSED: what it was, or what was wrong
    text: str = ""  # the human-readable explanation (searched for categories)
    original: Message | None = None  # headers of the returned or reported message

    def status_for(self, recipient: str) -> RecipientStatus | None:
        """The block about ``recipient``: the one naming it, else the worst one (an alias
        expanded by the remote side reports under another address)."""
        lowered = recipient.lower()
        named = [s for s in self.statuses if lowered in s.addresses()]
        rank = {"failed": 0, "delayed": 1}
        candidates = [s for s in named or self.statuses if s.action in rank]
        if not candidates:
            return named[0] if named else None
        return min(candidates, key=lambda s: rank[s.action])


def parse_report(data: bytes) -> Report:
    """Read one report; never raises."""
    try:
        msg = _PARSER.parsebytes(data)
        return _classify(msg)
    except Exception as exc:  # a hostile or broken report must never take the listener down
        return Report(UNPARSED, why=f"cannot parse: {type(exc).__name__}")


def _classify(msg: Message) -> Report:
    report_id = _clean(msg.get("Message-ID", ""))
    parts = list(_parts(msg))
    types = {p.get_content_type() for p in parts}
    raw_type = msg.get_param("report-type", "", header="content-type") or ""
    # An RFC 2231 encoded parameter comes as (charset, language, value).
    report_type = str(raw_type[2] if isinstance(raw_type, tuple) else raw_type).lower()

    if types & {"message/delivery-status", "message/global-delivery-status"}:
        report = _dsn(msg, parts)
    elif "message/feedback-report" in types or report_type == "feedback-report":
        report = _arf(msg, parts)
    elif report_type == "disposition-notification" or "message/disposition-notification" in types:
        report = Report(IGNORED, why="read receipt (message disposition notification)")
    elif (jmrp := _jmrp(msg, parts)) is not None:
        report = jmrp
    else:
        report = _text_bounce(msg, parts)
    report.report_id = report_id
    return report


# -- MIME structure -------------------------------------------------------------------------------


def _parts(msg: Message) -> list[Message]:
    """The report's own parts, depth first, without descending into attached messages (a
    returned message may itself be a bounce)."""
    out: list[Message] = []
    stack = [msg]
    while stack and len(out) < 200:
        part = stack.pop()
        out.append(part)
        payload = part.get_payload()
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
    return out


def _text_of(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw[:_TEXT_LIMIT].decode(charset, "replace")
    except LookupError:
        text = raw[:_TEXT_LIMIT].decode("latin-1")
    if part.get_content_subtype() == "html":
        text = html.unescape(re.sub(r"(?is)<(script|style).*?</\1>|<[^>]+>", " ", text))
    return text.replace("\r\n", "\n")


def _readable_text(parts: list[Message]) -> str:
    """The first text part that is not inside an attached message (plain over HTML)."""
    texts = [p for p in parts if p.get_content_maintype() == "text" and not _is_headers(p)]
    for subtype in ("plain", "html"):
        for part in texts:
            if part.get_content_subtype() == subtype:
                return _text_of(part)
    return ""


def _is_headers(part: Message) -> bool:
    return part.get_content_type() in (
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/rfc822-headers",
        "message/global-headers",
    )


def _original(parts: list[Message]) -> Message | None:
    """The returned or reported message (at least its headers)."""
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if _is_headers(part):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            return HeaderParser(policy=email.policy.compat32).parsestr(_text_of(part))
    return None


def _field_blocks(part: Message) -> list[list[tuple[str, str]]]:
    """The blank-line separated field blocks of a report part (RFC 3464 2.1, RFC 5965 3.1)."""
    payload = part.get_payload()
    blocks: list[list[tuple[str, str]]] = []
    texts: list[str] = []
    if isinstance(payload, list):
        # The email package parsed the blocks as messages: message/delivery-status gives one
        # per block; other message/* types one, whose body holds the blocks after the first.
        for sub in payload:
            if isinstance(sub, Message):
                blocks.append([(k.lower(), _clean(v)) for k, v in sub.items()])
                # decode=True: the raw bytes (get_payload() would decode 8-bit text as ASCII).
                rest = None if sub.is_multipart() else sub.get_payload(decode=True)
                if isinstance(rest, bytes):
                    texts.append(rest[:_TEXT_LIMIT].decode("utf-8", "replace"))
    else:
        texts.append(_text_of(part))
    for text in texts:
        for chunk in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
            if not chunk.strip():
                continue
            fields = HeaderParser(policy=email.policy.compat32).parsestr(chunk.strip() + "\n")
            blocks.append([(k.lower(), _clean(v)) for k, v in fields.items()])
    return [b for b in blocks if b]


def _clean(value: object) -> str:
    text = str(value)
    if not text.isascii():
        # 8-bit header bytes come as surrogate escapes (compat32): UTF-8 (RFC 6532) or junk.
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = re.sub(r"\s*\r?\n[ \t]+", " ", text).strip()
    return text[:_VALUE_LIMIT]


def _typed(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``; ``smtp; 550 ...`` -> ``550 ...`` (RFC 3464 2.3.2, 2.3.6)."""
    kind, sep, rest = value.partition(";")
    text = rest if sep and " " not in kind.strip() else value
    return text.strip().strip("<>").strip()


def _get(block: list[tuple[str, str]], name: str) -> str:
    for key, value in block:
        if key == name:
            return value
    return ""


# -- RFC 3464 -------------------------------------------------------------------------------------


def _dsn(msg: Message, parts: list[Message]) -> Report:
    part = next(
        p
        for p in parts
        if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    )
    blocks = _field_blocks(part)
    text = _readable_text(parts)
    if not blocks:
        fallback = _text_bounce(msg, parts)
        if fallback.kind == TEXT_BOUNCE:
            return fallback
        return Report(UNPARSED, why="empty delivery-status part", text=text)
    per_message = blocks[0] if not _get(blocks[0], "action") else []
    recipients = [b for b in blocks if _get(b, "action") or _get(b, "final-recipient")]
    statuses = []
    for block in recipients:
        action = (_get(block, "action").split() or [""])[0].lower()
        diagnostic = _typed(_get(block, "diagnostic-code"))
        status_code = classify.parse_status(_get(block, "status")) or classify.parse_status(
            diagnostic
        )
        if status_code is not None:
            status = ".".join(map(str, status_code))
        else:
            status = "5.0.0" if action == "failed" else "4.0.0" if action == "delayed" else ""
        if not action and status:
            action = "failed" if status.startswith("5") else "delayed"
        statuses.append(
            RecipientStatus(
                action=action,
                status=status,
                diagnostic=diagnostic,
                final_recipient=_typed(_get(block, "final-recipient")),
                original_recipient=_typed(_get(block, "original-recipient")),
                remote_mta=_typed(_get(block, "remote-mta")),
            )
        )
    if not statuses:
        return Report(UNPARSED, why="no per-recipient fields in the delivery-status part")
    if not any(s.action in ("failed", "delayed") for s in statuses):
        return Report(IGNORED, why=f"delivery notice ({statuses[0].action or 'no action'})")
    return Report(
        DSN,
        statuses=statuses,
        reporting_mta=_typed(_get(per_message, "reporting-mta")),
        text=text,
        original=_original(parts),
    )


# -- RFC 5965 -------------------------------------------------------------------------------------


def _arf(msg: Message, parts: list[Message]) -> Report:
    part = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    blocks = _field_blocks(part) if part is not None else []
    if not blocks:
        return Report(UNPARSED, why="feedback report without a message/feedback-report part")
    fields = [item for block in blocks for item in block]
    feedback_type = _get(fields, "feedback-type").lower()
    complaint = Complaint(
        feedback_type=feedback_type,
        user_agent=_get(fields, "user-agent"),
        original_mail_from=_typed(_get(fields, "original-mail-from")),
        original_rcpt_to=[_typed(v) for k, v in fields if k == "original-rcpt-to"],
        source_ip=_get(fields, "source-ip"),
        arrival_date=_get(fields, "arrival-date") or _get(fields, "received-date"),
        reported_domain=_get(fields, "reported-domain"),
    )
    if not feedback_type:
        return Report(UNPARSED, why="feedback report without Feedback-Type")
    original = _original(parts)
    if original is not None and not complaint.original_rcpt_to:
        # Some reporters leave Original-Rcpt-To out but keep the header they delivered to.
        for name in ("X-HmXmrOriginalRecipient", "X-Original-To", "Delivered-To"):
            if original.get(name):
                complaint.original_rcpt_to = [_typed(_clean(original[name]))]
                break
    return Report(ARF, complaint=complaint, text=_readable_text(parts), original=original)


def _jmrp(msg: Message, parts: list[Message]) -> Report | None:
    """Microsoft's JMRP before it used ARF: the complained-about message, attached whole,
    carries the address it was delivered to in X-HmXmrOriginalRecipient."""
    original = _original(parts)
    if original is None or not original.get("X-HmXmrOriginalRecipient"):
        return None
    complaint = Complaint(
        feedback_type="abuse",
        user_agent="Microsoft JMRP",
        original_mail_from=_typed(_clean(original.get("Return-Path", ""))),
        original_rcpt_to=[_typed(_clean(original["X-HmXmrOriginalRecipient"]))],
        source_ip=_clean(original.get("X-Reporter-IP", "")),
    )
    return Report(ARF, complaint=complaint, original=original)


# -- bare-text bounces ----------------------------------------------------------------------------

# Where the explanation ends and the returned message begins.
_ORIGINAL_STARTS = re.compile(
    r"^[ \t]*(?:-{2,}|={2,}|_{2,})?[ \t]*(?:"
    r"this is a copy of|original message|below this line is a copy|"
    r"the original message|returned message|a copy of the original|"
    r"undelivered message|message headers? follow|original message headers)",
    re.IGNORECASE | re.MULTILINE,
)
_FAILED = re.compile(
    r"permanent(?:ly)? (?:error|failure|fatal)|failed permanently|could ?n[o']t be delivered|"
    r"undeliverable|delivery has failed|was not delivered|unable to deliver|"
    r"delivery to the following recipients? failed|retry timeout exceeded|"
    r"wasn't able to deliver|mail delivery failed|returned mail|returned to sender|"
    r"delivery (?:status notification )?\(?failure|failure notice|non-?delivery|"
    r"message not delivered|delivery failed",
    re.IGNORECASE,
)
_DELAYED = re.compile(
    r"\bdelayed\b|has not (?:yet )?been delivered|not yet been delivered|"
    r"will (?:continue to )?(?:re)?try|still (?:be )?(?:trying|retried)|"
    r"temporar(?:y|ily) (?:error|failure|problem|unable)|delivery (?:status notification )?"
    r"\(?delay|warning: message",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response)|out of (?:the )?office|"
    r"abwesenheitsnotiz|r[ée]ponse automatique|vacation|away from)",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery|mail administrator", re.I)
# An SMTP reply quoted in the text: code, optional enhanced status, text.
_REPLY = re.compile(r"(?<![\d.:])([45]\d\d)(?:[ -]+(?:#?[245]\.\d{1,3}\.\d{1,3}\b)?|$)")
_ENHANCED_ALONE = re.compile(r"(?<![\d.])#?([45]\.\d{1,3}\.\d{1,3})(?![\d.])")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def _text_bounce(msg: Message, parts: list[Message]) -> Report:
    subject = _clean(msg.get("Subject", ""))
    sender = _clean(msg.get("From", ""))
    text = _readable_text(parts)
    cut = _ORIGINAL_STARTS.search(text)
    explanation = text[: cut.start()] if cut else text
    head = f"{subject}\n{explanation}"
    failed = bool(_FAILED.search(head))
    delayed = bool(_DELAYED.search(head))
    auto = (msg.get("Auto-Submitted", "") or "").strip().lower()
    if not failed and not delayed:
        if (
            auto.startswith("auto-")
            or _AUTO_REPLY_SUBJECT.search(subject)
            or msg.get("X-Autoreply")
        ):
            return Report(IGNORED, why="automatic reply")
        if not _BOUNCE_SENDER.search(sender) and not msg.get("X-Failed-Recipients"):
            return Report(UNPARSED, why="neither a delivery report nor a feedback report")
    diagnostic, status = _quoted_reply(explanation)
    if not failed and not delayed:
        if not status:
            return Report(UNPARSED, why="bounce without a recognizable failure")
        failed = status.startswith("5")
        delayed = not failed
    # "delayed" wording inside a final failure ("delivery has been delayed ... gave up")
    # is a failure; a warning that still retries is not.
    action = "failed" if failed and not (delayed and status.startswith("4")) else "delayed"
    if not status:
        status = "5.0.0" if action == "failed" else "4.0.0"
    recipients = [a.strip() for a in (msg.get("X-Failed-Recipients") or "").split(",") if "@" in a]
    final = recipients[0] if recipients else ""
    if not final:
        found = _ADDRESS.search(explanation)
        final = found.group(0) if found else ""
    original = _original(parts)
    if original is None and cut is not None:
        rest = text[cut.end() :].split("\n", 1)[-1].lstrip("\n")
        headers = HeaderParser(policy=email.policy.compat32).parsestr(rest[:_TEXT_LIMIT])
        original = headers if headers.keys() else None
    return Report(
        TEXT_BOUNCE,
        statuses=[RecipientStatus(action, status, diagnostic, final_recipient=final)],
        text=explanation[:_TEXT_LIMIT],
        original=original,
    )


def _quoted_reply(text: str) -> tuple[str, str]:
    """The remote SMTP reply quoted in a text bounce (its line and indented continuation
    lines), and its enhanced status code."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        found = _REPLY.search(line)
        if found is None:
            continue
        parts = [line[found.start() :].strip()]
        for more in lines[i + 1 : i + 6]:
            if not more[:1].isspace() or not more.strip():
                break
            parts.append(more.strip())
        diagnostic = " ".join(parts).strip(" '\"")[:_VALUE_LIMIT]
        enhanced = _ENHANCED_ALONE.search(diagnostic)
        if enhanced is not None:
            return diagnostic, enhanced.group(1)
        return diagnostic, f"{diagnostic[0]}.0.0"
    enhanced = _ENHANCED_ALONE.search(text)
    if enhanced is not None:
        start = text.rfind("\n", 0, enhanced.start()) + 1
        end = text.find("\n", enhanced.end())
        return text[start : end if end >= 0 else None].strip()[:_VALUE_LIMIT], enhanced.group(1)
    return "", ""
