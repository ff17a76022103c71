"""Webhook signing keys and the Standard Webhooks signature.

Every sender domain has its own random key: 64 upper-case hex characters (256 bits), the format
emailgateway.regeneratesigningkey returns. ``adddomain`` gives a new domain one; the 0004
migration gave one to every domain that had none (they used to share one installation-wide key,
so one tenant could sign what another tenant's endpoint accepts). Keys are stored sealed by
``SecretBox`` when a key-encryption key is configured. A migration cannot know that key, so it
writes clear keys, which the relay seals when it starts (as every stored secret), and
``ensure_keys`` gives a key to any domain still without one (a row written by an older
version). Readers take
either form, and a domain found without a key gets one on first use (``domain_key``).

Signature (Standard Webhooks, as CONTRACT "Webhooks" fixes it): ``webhook-signature`` is
``v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>``; the secret is
the base64-decoded rest of a ``whsec_`` key, or the key's UTF-8 bytes otherwise (our keys).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from relay.secrets import SecretBox, new_signing_key
from relay.store.db import Database
from relay.store.repos import webhooks as repo

WHSEC_PREFIX = "whsec_"


def secret_bytes(key: str) -> bytes:
    """The HMAC key of a signing key."""
    if key.startswith(WHSEC_PREFIX):
        rest = key[len(WHSEC_PREFIX) :]
        try:
            return base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass  # not base64 after all: its text is the key, as for any other form
    return key.encode("utf-8")


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


async def domain_key(db: Database, box: SecretBox, domain_id: int, stored: str | None) -> str:
    """A domain's key in clear, from its stored value; a domain without one gets one now
    (first writer wins)."""
    if stored:
        return box.open(stored)
    async with db.write() as conn:
        await repo.set_key_if_missing(conn, domain_id, box.seal(new_signing_key()))
        current = await repo.stored_key(conn, domain_id)
    if not current:
        raise LookupError(f"domain {domain_id} is gone")
    return box.open(current)


async def ensure_keys(db: Database, box: SecretBox) -> int:
    """At start: a key for every domain without one (a row written by an older version).
    Sealing clear keys is the node's start-up sealing of every stored secret
    (relay/store/repos/sealing.py). Safe with several nodes starting at once."""
    async with db.read() as conn:
        missing = await repo.domains_without_key(conn)
    generated = 0
    if missing:
        async with db.write() as conn:
            for domain_id in missing:
                generated += await repo.set_key_if_missing(
                    conn, domain_id, box.seal(new_signing_key())
                )
    return generated


async def current_key(db: Database, box: SecretBox, domain_id: int) -> str:
    """A domain's key as stored now (what a post is signed with)."""
    async with db.read() as conn:
        stored = await repo.stored_key(conn, domain_id)
    if stored is None:
        async with db.read() as conn:
            if not await repo.domain_exists(conn, domain_id):
                raise LookupError(f"domain {domain_id} is gone")
    return await domain_key(db, box, domain_id, stored)
