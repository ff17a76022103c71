"""DKIM (RFC 6376): per-domain RSA keys and the message signer.

Signing splits in two: canonicalization and hashing with dkimpy's own code on the event loop
(cheap), then the RSA private-key operation with ``cryptography`` in a thread pool, where it
releases the GIL (dkimpy's pure-Python RSA manages ~150 signatures/s; OpenSSL ~2,300 per core).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import RE_BTAG, fold, hash_headers
from dkim.canonicalization import CanonicalizationPolicy


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_b64: str


def generate_key(bits: int = 2048) -> KeyPair:
    """A new RSA key (CPU-heavy: call through a thread)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(pem, base64.b64encode(der).decode())


def default_selector(configured: str = "") -> str:
    return configured or "rl" + time.strftime("%Y%m", time.gmtime())


def rsa_sign_digest(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 over a SHA-256 digest (RFC 6376 3.3.1)."""
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


# --- signing ---------------------------------------------------------------------------------

# Signed once per occurrence plus once more, so adding another instance breaks the signature
# (RFC 6376 8.15 "oversigning").
OVERSIGN = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"cc")
# Signed once per occurrence when present.
SIGN_PRESENT = (
    b"sender",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"in-reply-to",
    b"references",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_NAME = b"DKIM-Signature"


def signed_header_names(headers: list[list[bytes]]) -> list[bytes]:
    counts = Counter(name.lower() for name, _ in headers)
    names: list[bytes] = []
    for name in OVERSIGN:
        names.extend([name] * (counts[name] + 1))
    for name in SIGN_PRESENT:
        names.extend([name] * counts[name])
    return names


@dataclass
class PendingSignature:
    """Everything but the RSA operation: what the thread pool gets."""

    fields: list[tuple[bytes, bytes]]
    digest: bytes


def prepare_signature(
    headers: list[list[bytes]], body: bytes, domain: str, selector: str, timestamp: int
) -> PendingSignature:
    """Canonicalize (relaxed/relaxed, RFC 6376 3.4.2 and 3.4.4) and hash, with dkimpy's code."""
    body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    include = signed_header_names(headers)
    fields: list[tuple[bytes, bytes]] = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain.encode()),
        (b"s", selector.encode()),
        (b"t", str(timestamp).encode()),
        (b"h", b":".join(include)),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    value = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
    hasher = hashlib.sha256()
    # The signature header is hashed with an empty b= and without its trailing CRLF (3.7).
    hash_headers(
        hasher,
        _RELAXED,
        _RELAXED.canonicalize_headers(headers),
        include,
        (_HEADER_NAME, b" " + RE_BTAG.sub(b"\\1", value)),
        None,
    )
    return PendingSignature(fields, hasher.digest())


def finish_signature(pending: PendingSignature, signature: bytes) -> tuple[bytes, bytes]:
    fields = [(k, base64.b64encode(signature) if k == b"b" else v) for k, v in pending.fields]
    value = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
    return _HEADER_NAME, b" " + value + b"\r\n"


class DkimSigner:
    """Signs on the event loop's behalf; the private-key operation runs in a small thread pool
    (OpenSSL releases the GIL there), so signing never stalls other sessions."""

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dkim")

    async def sign(
        self,
        key: rsa.RSAPrivateKey,
        headers: list[list[bytes]],
        body: bytes,
        domain: str,
        selector: str,
    ) -> tuple[bytes, bytes]:
        """The DKIM-Signature header (name, value-with-CRLF) for this message."""
        loop = asyncio.get_running_loop()
        if len(body) > _LARGE_BODY:
            # Canonicalizing megabytes would hold the loop for milliseconds: do it all there.
            pending = await loop.run_in_executor(
                self._pool, prepare_signature, headers, body, domain, selector, int(time.time())
            )
        else:
            pending = prepare_signature(headers, body, domain, selector, int(time.time()))
        signature = await loop.run_in_executor(self._pool, rsa_sign_digest, key, pending.digest)
        return finish_signature(pending, signature)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


_LARGE_BODY = 256 * 1024
