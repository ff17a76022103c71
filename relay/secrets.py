"""Secrets: generated with high entropy, shown once, stored hashed (or encrypted when we must
read them back, like DKIM private keys and webhook signing keys).

Generated secrets carry at least 128 bits of entropy, so a single SHA-256 is enough to store
them: there is nothing to brute-force. Human-chosen passwords (user.login) go through scrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import string

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_ALNUM = string.ascii_letters + string.digits
_ENC_PREFIX = "enc:v1:"
SEALED_PREFIX = _ENC_PREFIX  # what a sealed value starts with


def random_string(length: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_api_key() -> str:
    """Sender-domain API key (Bearer of the public v1 routes)."""
    return "eg_live_" + random_string(32)


def new_user_api_key() -> str:
    return random_string(40)


def new_admin_api_key() -> str:
    return "adm_" + random_string(40)


def new_smtp_username() -> str:
    return "smtp_" + random_string(16, string.ascii_lowercase + string.digits)


def new_smtp_password() -> str:
    return random_string(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_signing_key() -> str:
    """Webhook signing key: 64 upper-case hex characters (256 bits), as the documents give."""
    return secrets.token_hex(32).upper()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def verify_secret(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def mask_secret(secret: str, visible: int = 4) -> str:
    """What listings show of a secret that was returned once: its kind and last characters."""
    prefix = "eg_live_" if secret.startswith("eg_live_") else ""
    return prefix + "*" * 8 + secret[-visible:]


# scrypt parameters: n=2**14, r=8, p=1 costs ~50 ms and 16 MiB (OWASP's interactive minimum).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_b64, digest_b64 = stored.split("$", 2)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=base64.b64decode(salt_b64),
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=32,
    )
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def decode_kek(text: str) -> bytes:
    """The key-encryption key is 32 bytes, given base64-encoded."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("must be base64 of 32 random bytes") from None
    if len(raw) != 32:
        raise ValueError("must be base64 of 32 random bytes")
    return raw


class SecretBox:
    """Encrypts stored secrets with AES-256-GCM when a key-encryption key is configured.

    Without a KEK values are stored as given; values written under a KEK carry a prefix, so a
    KEK can be introduced later without rewriting old rows.
    """

    def __init__(self, kek: str = "") -> None:
        self._aead = AESGCM(decode_kek(kek)) if kek else None

    @property
    def sealing(self) -> bool:
        """True when values are sealed (a key-encryption key is in use)."""
        return self._aead is not None

    @staticmethod
    def is_sealed(stored: str) -> bool:
        """The stored value was written encrypted."""
        return stored.startswith(_ENC_PREFIX)

    def seal(self, plaintext: str) -> str:
        if self._aead is None:
            return plaintext
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), None)
        return _ENC_PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(_ENC_PREFIX):
            return stored
        if self._aead is None:
            raise ValueError("value is encrypted but no key_encryption_key is configured")
        raw = base64.b64decode(stored[len(_ENC_PREFIX) :])
        return self._aead.decrypt(raw[:12], raw[12:], None).decode("utf-8")
