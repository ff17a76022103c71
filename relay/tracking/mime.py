"""The MIME side of tracking: which parts may be changed, and the message as a template.

A message is parsed once (the standard library's ``email`` package, compat32: it keeps
unchanged parts as they came). The parts tracking changes get a unique marker as their body and
the whole body is serialized once; split at the markers it becomes the constant byte pieces
between which each recipient's encoded parts go. Rendering a recipient is then string joins
and one C-speed transfer encoding per changed part.

Nothing is changed in a message that someone else signed or encrypted: a DKIM or ARC signature
of its own (its body hash would break), S/MIME or PGP (``multipart/signed``,
``multipart/encrypted``, ``application/pkcs7-mime``, inline ``-----BEGIN PGP``): changing one
byte of signed content breaks the signature, and encrypted content cannot be read.
"""

from __future__ import annotations

import binascii
import codecs
import email.message
import email.policy
import io
import secrets
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.parser import BytesParser

from relay.message import Headers, ParsedMessage, normalize_line_endings

SIGNED_OR_ENCRYPTED = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
        "application/pgp-encrypted",
        "application/pgp-signature",
    }
)
# Headers of someone else's signature over this message (RFC 6376, RFC 8617).
FOREIGN_SIGNATURES = (b"dkim-signature", b"arc-message-signature", b"arc-seal")
INLINE_PGP = ("-----BEGIN PGP MESSAGE-----", "-----BEGIN PGP SIGNED MESSAGE-----")

_POLICY = email.policy.compat32.clone(linesep="\r\n")
# Characters of the markup and URLs we insert: a charset that cannot carry them as ASCII
# (UTF-16, UTF-32, EBCDIC...) is left alone.
_ASCII_PROBE = '<a href="https://x-y.z/c/AZaz09_-">\'=;:/ </a>\r\n'


class Untouchable(Exception):
    """The message must go out exactly as it came; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class TextPart:
    node: email.message.Message
    html: bool  # text/html, else text/plain
    text: str  # decoded content
    charset: str
    cte: str  # the part's Content-Transfer-Encoding, lower case ("" = none: 7bit)
    top_level: bool


# The top-level headers that decide how the body is read (with the body itself, all that
# parse() and template() look at, apart from check_headers()).
STRUCTURE_HEADERS = (b"content-type", b"content-transfer-encoding", b"content-disposition")


def check_headers(message: ParsedMessage) -> None:
    """Raise Untouchable for a message someone else signed (its headers say so)."""
    for name, _ in message.headers:
        if name.lower() in FOREIGN_SIGNATURES:
            raise Untouchable("signed")


def parse(message: ParsedMessage) -> tuple[email.message.Message, list[TextPart]]:
    """The parsed message and its inline text/html and text/plain parts, in order; raises
    Untouchable for a message tracking must not change."""
    check_headers(message)
    root = BytesParser(policy=_POLICY).parsebytes(message.to_bytes())
    parts: list[TextPart] = []
    _walk(root, parts, top_level=True)
    return root, parts


def _walk(node: email.message.Message, out: list[TextPart], *, top_level: bool) -> None:
    ctype = node.get_content_type()
    if ctype in SIGNED_OR_ENCRYPTED:
        raise Untouchable("signed" if "sign" in ctype else "encrypted")
    if node.get_content_maintype() == "multipart":
        payload = node.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, email.message.Message):
                    _walk(child, out, top_level=False)
        return
    # message/rfc822 and the like are attachments: never entered.
    if ctype not in ("text/html", "text/plain"):
        return
    if node.get_content_disposition() == "attachment" or node.get_filename():
        return
    part = _decode(node, ctype == "text/html", top_level)
    if part is None:
        return
    if any(marker in part.text for marker in INLINE_PGP):
        raise Untouchable("signed")
    out.append(part)


def _decode(node: email.message.Message, is_html: bool, top_level: bool) -> TextPart | None:
    """The part's text, or None when it cannot be decoded faithfully (then it is left as is)."""
    cte = str(node.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte not in ("", "7bit", "8bit", "binary", "quoted-printable", "base64"):
        return None
    charset = node.get_content_charset() or "us-ascii"
    try:
        codec = codecs.lookup(charset)
        if _ASCII_PROBE.encode(codec.name) != _ASCII_PROBE.encode("ascii"):
            return None
        raw = node.get_payload(decode=True)
        if not isinstance(raw, bytes):
            return None
        text = raw.decode(codec.name)
    except (LookupError, UnicodeError):
        return None
    return TextPart(node, is_html, text, codec.name, cte, top_level)


def encode(data: bytes, cte: str) -> bytes:
    """The body of a part in its transfer encoding, CRLF line ends (RFC 2045 6.7, 6.8)."""
    if cte == "base64":
        flat = binascii.b2a_base64(data, newline=False)
        return b"\r\n".join(flat[i : i + 76] for i in range(0, len(flat), 76)) + b"\r\n"
    data = normalize_line_endings(data)
    if cte == "quoted-printable":
        return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return data


@dataclass(slots=True)
class BodyTemplate:
    """The body as constant pieces around the changed parts (``len(pieces) == slots + 1``),
    and the top-level headers to use (a single-part message's own encoding may change)."""

    pieces: list[bytes]
    headers: Headers


def template(
    message: ParsedMessage, root: email.message.Message, changed: list[tuple[TextPart, str]]
) -> BodyTemplate:
    """Serialize ``root`` once with each changed part's body replaced by a marker; ``changed``
    pairs a part with the transfer encoding its new content will be written in."""
    nonce = secrets.token_hex(8)
    markers: list[bytes] = []
    headers = top_level_headers(message.headers, top_level_change(changed))
    for i, (part, cte) in enumerate(changed):
        marker = f"=_relay_track_{nonce}_{i}_"
        markers.append(marker.encode("ascii"))
        # A single part's encoding is a header of the message (top_level_headers).
        if not part.top_level and cte != part.cte:
            del part.node["Content-Transfer-Encoding"]
            part.node["Content-Transfer-Encoding"] = cte
        part.node.set_payload(marker)
    if len(changed) == 1 and changed[0][0].top_level:
        return BodyTemplate([b"", b""], headers)
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(
        root, unixfrom=False, linesep="\r\n"
    )
    flat = out.getvalue()
    end = 0 if flat.startswith(b"\r\n") else flat.find(b"\r\n\r\n") + 2
    body = flat[end + 2 :]
    pieces: list[bytes] = []
    for mark in markers:
        before, found, body = body.partition(mark)
        if not found:
            raise Untouchable("unexpected_structure")
        pieces.append(before)
    pieces.append(body)
    return BodyTemplate(pieces, headers)


def top_level_change(changed: list[tuple[TextPart, str]]) -> tuple[str, str] | None:
    """(new, old) transfer encoding of a changed single-part message's own part, if any."""
    return next(((cte, part.cte) for part, cte in changed if part.top_level), None)


def top_level_headers(headers: Headers, change: tuple[str, str] | None) -> Headers:
    """A copy of the message's headers, with the new Content-Transfer-Encoding of a changed
    single-part message."""
    copied = [list(h) for h in headers]
    if change is None or change[0] == change[1]:
        return copied
    kept = [h for h in copied if h[0].lower() != b"content-transfer-encoding"]
    kept.append([b"Content-Transfer-Encoding", b" " + change[0].encode() + b"\r\n"])
    return kept
