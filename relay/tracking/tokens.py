"""Tracking tokens: opaque, unforgeable, self-contained.

A token is ``base64url(key_id || AES-SIV(plaintext, associated_data=[kind]))``. The plaintext
holds the queue id, the recipient, the time the token was made and, for a click, the link's
index and its original URL, so a hit needs no lookup at all: decrypt, answer, record.

AES-SIV (RFC 5297) is deterministic authenticated encryption: it needs no nonce (so there is no
nonce to run out of or to repeat across nodes), and any change to a token (or using an open
token as an unsubscribe token: the kind is authenticated too) fails to decrypt, which the
listener answers with 404. Encryption rather than a MAC alone keeps recipients' addresses and
message ids out of URLs that end up in proxies' and scanners' logs.

The key is derived (HKDF-SHA256) from a secret every node of a cluster shares
(relay/tracking/keys.py says where it comes from). ``key_id`` names the derivation, so a later
rotation can keep accepting tokens already in people's mailboxes.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CLICK = b"c"
OPEN = b"o"
UNSUBSCRIBE = b"u"
KINDS = (CLICK, OPEN, UNSUBSCRIBE)

KEY_ID = 1
SECRET_BYTES = 32
# A token longer than this is not one of ours (links are rewritten only up to MAX_URL_CHARS):
# refuse it before any base64 or crypto work.
MAX_URL_CHARS = 2048
MAX_TOKEN_CHARS = 4096
# Recipient addresses are at most 254 octets in practice (RFC 5321 4.5.3.1.3 allows a 256-octet
# path with its brackets); a longer one is simply not tracked.
MAX_RECIPIENT_BYTES = 255

_HEAD = struct.Struct(">I")  # minted at (Unix seconds)
_LINK = struct.Struct(">H")  # link index
# The longest ``prefix``: minted time, a message id of up to 255 bytes and a recipient of up to
# MAX_RECIPIENT_BYTES, each after its length byte.
MAX_PREFIX_BYTES = _HEAD.size + 1 + 255 + 1 + MAX_RECIPIENT_BYTES
_UUID_TAG = 0  # queue id stored as 16 raw bytes; otherwise a length byte and the text
_KEY_BYTE = bytes([KEY_ID])
_ASSOCIATED = {kind: [kind] for kind in KINDS}  # AES-SIV's associated data, per kind
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64 -> base64url (RFC 4648 5)


def decode_secret(text: str) -> bytes:
    """``tracking.secret``: base64 of at least 32 random bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of at least 32 random bytes") from None
    if len(raw) < SECRET_BYTES:
        raise ValueError("must be base64 of at least 32 random bytes")
    return raw


@dataclass(frozen=True, slots=True)
class Token:
    """What a token says, once it decrypted."""

    kind: bytes
    message_id: str
    recipient: str
    minted_at: int
    link_index: int = -1
    url: str = ""


class TokenCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError("the tracking secret must have at least 32 bytes")
        key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=b"relay tracking tokens v1"
        ).derive(secret)
        self._siv = AESSIV(key)  # 64-byte key: AES-256-SIV

    # -- making ------------------------------------------------------------------------------

    @staticmethod
    def prefix(message_id: str, recipient: str, minted_at: int) -> bytes | None:
        """The plaintext every token of one recipient of one message starts with, or None when
        the recipient cannot be tracked (address too long)."""
        rcpt = recipient.encode("utf-8", "surrogateescape")
        if len(rcpt) > MAX_RECIPIENT_BYTES:
            return None
        try:
            mid = uuid.UUID(message_id)
            canonical = str(mid) == message_id
        except ValueError:
            canonical = False
        if canonical:
            ident = bytes([_UUID_TAG]) + uuid.UUID(message_id).bytes
        else:
            raw = message_id.encode("utf-8")
            if not 0 < len(raw) <= 255:
                return None
            ident = bytes([len(raw)]) + raw
        return _HEAD.pack(minted_at & 0xFFFFFFFF) + ident + bytes([len(rcpt)]) + rcpt

    def make(self, kind: bytes, prefix: bytes, link_index: int = -1, url: str = "") -> str:
        plain = prefix
        if kind == CLICK:
            plain += click_suffix(link_index, url)
        return self.seal(kind, plain)

    def seal(self, kind: bytes, plain: bytes) -> str:
        """The token of a whole plaintext: ``prefix(...)``, plus ``click_suffix(...)`` for a
        click. (Rendering keeps each link's suffix and calls this once per link and
        recipient.)"""
        sealed = self._siv.encrypt(plain, _ASSOCIATED[kind])
        b64 = binascii.b2a_base64(_KEY_BYTE + sealed, newline=False)
        return b64.translate(_URLSAFE).rstrip(b"=").decode("ascii")

    # -- reading -----------------------------------------------------------------------------

    def read(self, kind: bytes, token: str) -> Token | None:
        """The token's contents, or None for anything we did not make for this kind."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 2 or raw[0] != KEY_ID:
            return None
        # One spelling per token: base64's unused trailing bits must be zero (RFC 4648 3.5).
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        try:
            plain = self._siv.decrypt(raw[1:], [kind])
        except (InvalidTag, ValueError):
            return None
        return _parse(kind, plain)


def max_token_chars(plain_bytes: int) -> int:
    """The length of the token of a plaintext this long: key id, the 16-byte SIV, the
    ciphertext, in base64url without padding."""
    return -(-4 * (1 + 16 + plain_bytes) // 3)


def click_suffix(link_index: int, url: str) -> bytes:
    """The end of a click token's plaintext: the link's index and its original URL."""
    return _LINK.pack(link_index) + url.encode("utf-8")


def _parse(kind: bytes, plain: bytes) -> Token | None:
    """Our own plaintext layout (it decrypted, so it is ours); still checked, never trusted
    blindly."""
    try:
        (minted,) = _HEAD.unpack_from(plain, 0)
        pos = _HEAD.size
        tag = plain[pos]
        pos += 1
        if tag == _UUID_TAG:
            message_id = str(uuid.UUID(bytes=plain[pos : pos + 16]))
            pos += 16
        else:
            message_id = plain[pos : pos + tag].decode("utf-8")
            pos += tag
        rlen = plain[pos]
        pos += 1
        recipient = plain[pos : pos + rlen].decode("utf-8", "surrogateescape")
        pos += rlen
        if len(recipient.encode("utf-8", "surrogateescape")) != rlen:
            return None
        if kind != CLICK:
            return Token(kind, message_id, recipient, minted) if pos == len(plain) else None
        (index,) = _LINK.unpack_from(plain, pos)
        url = plain[pos + _LINK.size :].decode("utf-8")
    except (IndexError, ValueError, struct.error):
        return None
    return Token(kind, message_id, recipient, minted, index, url)
