"""Message content: line endings, header parsing, the From rule, headers the relay adds.

Everything here works on bytes in the form the SMTP DATA phase produced (dot-unstuffed).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.policy import SMTP

from relay.store.db import storable_text

# A line ends at CRLF, or at a bare CR or LF: the same rule for dot-unstuffing and for
# normalizing, so no line is unstuffed under one rule and becomes a line under the other.
_ANY_EOL = re.compile(rb"\r\n|\r|\n")
# RFC 5321 4.5.2: "If the first character is a period and there are other characters on the
# line, the first character is deleted."
_STUFFED = re.compile(rb"(\r\n|\r|\n)\.(?=[^\r\n])")
_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")
_UNFOLD = re.compile(r"\r\n(?=[ \t])")


class MalformedMessage(Exception):
    """The content cannot be a valid RFC 5322 message."""


def _crlf_only(data: bytes | bytearray) -> bool:
    crlf = data.count(b"\r\n")
    return crlf == data.count(b"\n") == data.count(b"\r")


def dot_unstuff(data: bytes | bytearray) -> bytes:
    """RFC 5321 4.5.2: the leading dot the client added to every line that starts with one is
    removed. ``data`` begins with a line ending (the one before the first line) and ends with
    the last line's, terminator removed. Lines are what ``normalize_line_endings`` will make
    CRLF lines, so a stuffed line after a bare LF (``\\n..\\n``) loses its dot too and
    arrives as ``.``; a line of a single dot that did not end DATA (``\\n.\\n``) stays."""
    if _crlf_only(data):
        # No CRLF "." CRLF line is left (the first one ended DATA): every dot has company.
        return bytes(data.replace(b"\r\n.", b"\r\n"))
    return _STUFFED.sub(rb"\1", data)


def normalize_line_endings(data: bytes) -> bytes:
    """Bare CR or LF become CRLF (CONTRACT: before signing; aiosmtplib would do it after and
    break the signature). The common case, already clean, is three C-speed counts."""
    if _crlf_only(data):
        return data
    return _ANY_EOL.sub(b"\r\n", data)


def has_line_longer_than(data: bytes, limit: int) -> bool:
    """RFC 5322 2.1.1: at most 998 characters per line, excluding CRLF. (Lines are CRLF-only
    by now; split+len runs in C, where a regex would retry from every position.)"""
    if limit <= 0 or len(data) <= limit:
        return False
    return max(map(len, data.split(b"\r\n"))) > limit


Headers = list[list[bytes]]  # [name, value-with-folding-and-CRLF], as dkimpy parses them


@dataclass
class ParsedMessage:
    headers: Headers
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def first_text(self, name: bytes) -> str:
        """The first such header's value as storable text (for the message's metadata)."""
        vals = self.values(name)
        return storable_text(unfold(vals[0])) or "" if vals else ""

    def to_bytes(self, prepend: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        parts = [n + b":" + v for n, v in prepend]
        parts.extend(n + b":" + v for n, v in self.headers)
        return b"".join(parts) + b"\r\n" + self.body


def parse(data: bytes) -> ParsedMessage:
    """Headers and body, exactly as dkimpy's ``rfc822_parse`` gives them for CRLF-only input,
    without splitting and re-joining the body line by line."""
    end = 0 if data.startswith(b"\r\n") else data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data, b""
    elif end == 0:
        return ParsedMessage([], data[2:])
    else:
        head, body = data[: end + 2], data[end + 4 :]
    # Each header's lines are collected and joined once: appending to a bytes value per folded
    # line copies it every time, quadratic in a header folded over many lines.
    names: list[bytes] = []
    lines: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue  # the split's empty tail
        if line[0] in (0x09, 0x20):
            if not lines:
                raise MalformedMessage("continuation line before any header")
            lines[-1].append(line)
            continue
        m = _HEADER_NAME.match(line)
        if m is not None:
            names.append(m.group(1))
            lines.append([line[m.end() :]])
        elif not line.startswith(b"From "):
            raise MalformedMessage("invalid header line")
    headers: Headers = [
        [name, b"\r\n".join(value) + b"\r\n"] for name, value in zip(names, lines, strict=True)
    ]
    return ParsedMessage(headers, body)


def unfold(value: bytes) -> str:
    text = value.decode("utf-8", "surrogateescape")
    if "\r\n" in text[:-2]:
        text = _UNFOLD.sub("", text)
    return text.strip()


# A single mailbox in its common forms: addr, <addr>, Name <addr>, "Name" <addr>.
_SIMPLE_MAILBOX = re.compile(
    r'^\s*(?:(?:"[^"\\\r\n]*"|[^<>",;:@\\\r\n]*)\s*<([^<>\s",;:@\\]+@[^<>\s",;:@\\]+)>'
    r'|([^<>\s",;:@\\()]+@[^<>\s",;:@\\()]+))\s*$'
)


def from_addresses(msg: ParsedMessage) -> list[str]:
    """Mailboxes of the From header(s); raises MalformedMessage if they can't be parsed."""
    out: list[str] = []
    for raw in msg.values(b"from"):
        text = unfold(raw)
        simple = _SIMPLE_MAILBOX.match(text)
        if simple is not None:
            out.append(simple.group(1) or simple.group(2))
            continue
        pairs = email.utils.getaddresses([text])
        # The email package joins atoms separated by spaces ("exa mple.com" -> "example.com"):
        # a domain that is not in the header as such is not the header's domain.
        if not pairs or any(
            "@" not in addr or addr.rpartition("@")[2] not in text for _, addr in pairs
        ):
            raise MalformedMessage("unparseable From header")
        out.extend(addr for _, addr in pairs)
    return out


def header(name: str, value: str) -> tuple[bytes, bytes]:
    return name.encode(), b" " + value.encode("utf-8", "surrogateescape") + b"\r\n"


def encoded_header(name: str, text: str) -> tuple[bytes, bytes]:
    """A header from text the relay was given: RFC 2047 encoded words when it is not ASCII,
    folded to 78 characters (RFC 5322 2.2.3), by the email package's SMTP policy."""
    folded = SMTP.fold_binary(*SMTP.header_store_parse(name, text))
    return name.encode(), folded[len(name) + 1 :]


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
