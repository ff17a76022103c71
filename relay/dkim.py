"""DKIM (RFC 6376): per-domain RSA keys and the message signer.

Signing splits in two: canonicalization and hashing with dkimpy's own code on the event loop
(cheap), then the RSA private-key operation with ``cryptography`` in a thread pool, where it
releases the GIL (dkimpy's pure-Python RSA manages ~150 signatures/s; OpenSSL ~2,300 per core).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed


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
