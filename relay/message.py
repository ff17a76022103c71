"""Message content: line endings, header parsing, the From rule, headers the relay adds.

Everything here works on bytes in the form the SMTP DATA phase produced (dot-unstuffed).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dkim import MessageFormatError, rfc822_parse

_ANY_EOL = re.compile(rb"\r\n|\r|\n")
_LONG_LINE: dict[int, re.Pattern[bytes]] = {}


class MalformedMessage(Exception):
    """The content cannot be a valid RFC 5322 message."""


def normalize_line_endings(data: bytes) -> bytes:
    """Bare CR or LF become CRLF (CONTRACT: before signing; aiosmtplib would do it after and
    break the signature). The common case, already clean, is three C-speed counts."""
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\n") == data.count(b"\r"):
        return data
    return _ANY_EOL.sub(b"\r\n", data)


def has_line_longer_than(data: bytes, limit: int) -> bool:
    """RFC 5322 2.1.1: at most 998 characters per line, excluding CRLF."""
    if limit <= 0 or len(data) <= limit:
        return False
    pattern = _LONG_LINE.get(limit)
    if pattern is None:
        pattern = _LONG_LINE[limit] = re.compile(rb"[^\r\n]{%d}" % (limit + 1))
    return pattern.search(data) is not None


Headers = list[list[bytes]]  # [name, value-with-folding-and-CRLF], as dkimpy parses them


@dataclass
class ParsedMessage:
    headers: Headers
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def first_text(self, name: bytes) -> str:
        vals = self.values(name)
        return unfold(vals[0]) if vals else ""

    def to_bytes(self, prepend: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        parts = [n + b":" + v for n, v in prepend]
        parts.extend(n + b":" + v for n, v in self.headers)
        return b"".join(parts) + b"\r\n" + self.body


def parse(data: bytes) -> ParsedMessage:
    try:
        headers, body = rfc822_parse(data)
    except MessageFormatError:
        raise MalformedMessage("invalid header line") from None
    return ParsedMessage(headers, body)


def unfold(value: bytes) -> str:
    return re.sub(r"\r\n(?=[ \t])", "", value.decode("utf-8", "surrogateescape")).strip()


def from_addresses(msg: ParsedMessage) -> list[str]:
    """Mailboxes of the From header(s); raises MalformedMessage if they can't be parsed."""
    out: list[str] = []
    for raw in msg.values(b"from"):
        pairs = email.utils.getaddresses([unfold(raw)])
        if not pairs or any("@" not in addr for _, addr in pairs):
            raise MalformedMessage("unparseable From header")
        out.extend(addr for _, addr in pairs)
    return out


def header(name: str, value: str) -> tuple[bytes, bytes]:
    return name.encode(), b" " + value.encode("utf-8", "surrogateescape") + b"\r\n"


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    queue_id: str,
    tls: str | None,
    authenticated: bool,
    now: float | None = None,
) -> tuple[bytes, bytes]:
    """RFC 5321 4.4 trace header; protocol per RFC 3848 (ESMTPSA = TLS + AUTH)."""
    proto = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    tls_part = f" ({tls})" if tls else ""
    date = email.utils.formatdate(now or time.time(), localtime=False, usegmt=False)
    value = (
        f"from {helo} ([{client_ip}])\r\n\tby {hostname} (relay) with {proto}{tls_part}"
        f"\r\n\tid {queue_id}; {date}"
    )
    return header("Received", value)


def message_id_header(queue_id: str, hostname: str) -> tuple[bytes, bytes]:
    return header("Message-ID", f"<{queue_id}@{hostname}>")


def date_header(now: float | None = None) -> tuple[bytes, bytes]:
    return header("Date", email.utils.formatdate(now or time.time(), localtime=False))
