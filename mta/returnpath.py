"""The return path: a VERP MAIL FROM per recipient, and a delivery server's From rules.

Every message leaves with ``MAIL FROM:<b1-TOKEN@HOST>``, one transaction per recipient, so a
bounce or complaint sent back to that address says which message and which recipient it is
about (VERP). The rules for HOST and for the From header (seed 004's DomainSettings_MFrom,
DomainSettings_EnforcedFrom, SenderInfoAsMFrom, SenderInfoAsFrom) are in ``plan`` and in
docs/delivery.md "Return path".

The token (the local part after ``b1-``) is RFC 4648 base32, lower case, of 31 bytes:

    message id (the queue id's 16 UUID bytes) | recipient tag (5) | MAC (10)

- recipient tag: HMAC-SHA256(tag key, lower-cased recipient), first 5 bytes. The recipient
  itself is not in the address (it would not fit in 64 octets, and it would tell anyone who
  sees the return path whom the message went to); the MX listener finds it among the
  message's recipients by its tag.
- MAC: HMAC-SHA256(MAC key, HOST | message id | tag), first 10 bytes (80 bits). Binding HOST
  means a token is good only at the host it was issued for. Checked in constant time.

53 octets in all, within RFC 5321 4.5.3.1.1's 64 for a local part, and only [a-z0-9-], so an
MTA that lower- or upper-cases the local part (RFC 5321 2.4 lets them; some do) changes
nothing: the token is decoded case-insensitively.

The two keys are derived from one secret that every node must share: ``security.
return_path_secret`` when configured, else a random one generated once and kept in the
database (``cluster_secrets``, sealed like other stored secrets), which every node of a
deployment shares anyway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from mta import transaction
from mta.pool import Connection
from relay.config import Settings
from relay.directory import DeliveryServerView, Directory, DomainView
from relay.dkim import DkimSigner
from relay.dns.records import return_path_host
from relay.message import MalformedMessage, from_addresses, parse, unfold
from relay.queue.model import QueuedMessage
from relay.secrets import SecretBox
from relay.store.db import Database
from relay.store.repos import cluster_secrets

log = structlog.get_logger("mta.returnpath")

PREFIX = "b1-"
_ID_BYTES, TAG_BYTES, MAC_BYTES = 16, 5, 10
_TOKEN_BYTES = _ID_BYTES + TAG_BYTES + MAC_BYTES
# base32 without padding: 8 characters per 5 bytes, rounded up.
_TOKEN_CHARS = -(-_TOKEN_BYTES * 8 // 5)
LOCAL_PART_LENGTH = len(PREFIX) + _TOKEN_CHARS
assert LOCAL_PART_LENGTH <= 64  # RFC 5321 4.5.3.1.1
_TOKEN_RE = re.compile(rf"(?i){re.escape(PREFIX)}([a-z2-7]{{{_TOKEN_CHARS}}})")
# A return path anywhere in a text (a report quoting it); still to be verified with ``parse``.
QUOTED = re.compile(rf"(?i){re.escape(PREFIX)}[a-z2-7]{{{_TOKEN_CHARS}}}@[a-z0-9.-]+")
SECRET_NAME = "return_path_verp"  # noqa: S105 (the row name, not a secret)


@dataclass(frozen=True, slots=True)
class Token:
    """A verified return path: which message, the tag of which recipient, at which host."""

    message_id: str
    tag: bytes
    host: str


class VerpKeys:
    def __init__(self, secret: bytes) -> None:
        # Two keys from one secret (HKDF-Expand-like labels): the tag and the MAC never share
        # a key, so neither output helps forge the other. Keyed once; each use copies the
        # keyed state (half the cost of hmac.new per address).
        tag_key = hmac.new(secret, b"relay return-path v1 recipient tag", "sha256").digest()
        mac_key = hmac.new(secret, b"relay return-path v1 token mac", "sha256").digest()
        self._tag = hmac.new(tag_key, digestmod=hashlib.sha256)
        self._mac_state = hmac.new(mac_key, digestmod=hashlib.sha256)

    def tag(self, recipient: str) -> bytes:
        h = self._tag.copy()
        h.update(recipient.strip().lower().encode("utf-8", "surrogateescape"))
        return h.digest()[:TAG_BYTES]

    def _mac(self, host: str, payload: bytes) -> bytes:
        h = self._mac_state.copy()
        name = _host(host)
        # Return-path hosts are ASCII (A-labels); the idna codec only for anything else.
        h.update((name.encode() if name.isascii() else name.encode("idna")) + b"\0" + payload)
        return h.digest()[:MAC_BYTES]

    def local_part(self, message_id: str, recipient: str, host: str) -> str:
        """Raises ValueError when ``message_id`` is not a UUID (every queue id is one)."""
        payload = uuid.UUID(message_id).bytes + self.tag(recipient)
        raw = payload + self._mac(host, payload)
        return PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()

    def address(self, message_id: str, recipient: str, host: str) -> str:
        return f"{self.local_part(message_id, recipient, host)}@{_host(host)}"

    def parse(self, address: str) -> Token | None:
        """The token of a return-path address, or None unless it is one we issued for its host."""
        local, at, host = address.strip().strip("<>").rpartition("@")
        if not at or not host:
            return None
        found = _TOKEN_RE.fullmatch(local)
        if found is None:
            return None
        text = found[1].upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
            expected = self._mac(host, raw[: _ID_BYTES + TAG_BYTES])
        except (binascii.Error, ValueError, UnicodeError):
            return None
        if len(raw) != _TOKEN_BYTES or not hmac.compare_digest(raw[-MAC_BYTES:], expected):
            return None
        if base64.b32encode(raw).decode().rstrip("=") != text:
            return None  # unused low bits set: not the one spelling we issue
        message_id = str(uuid.UUID(bytes=raw[:_ID_BYTES]))
        return Token(message_id, raw[_ID_BYTES : _ID_BYTES + TAG_BYTES], _host(host))

    def quoted(self, text: str) -> set[Token]:
        """The valid return paths quoted in ``text``."""
        found = (self.parse(m.group(0)) for m in QUOTED.finditer(text))
        return {t for t in found if t is not None}

    def is_recipient(self, token: Token, recipient: str) -> bool:
        return hmac.compare_digest(token.tag, self.tag(recipient))


def _host(host: str) -> str:
    return host.strip().rstrip(".").lower()


async def load_keys(db: Database, box: SecretBox, configured: str = "") -> VerpKeys:
    """The deployment's keys: the configured secret, else the one in the database (made by
    the first node that needs it; a node that loses the race reads the winner's)."""
    if configured:
        return VerpKeys(configured.encode("utf-8"))
    candidate = box.seal(base64.b64encode(secrets.token_bytes(32)).decode())
    async with db.read() as conn:
        stored = await cluster_secrets.get(conn, SECRET_NAME)
    if stored is None:
        async with db.write() as conn:
            stored = await cluster_secrets.get_or_create(conn, SECRET_NAME, candidate)
    return VerpKeys(base64.b64decode(box.open(stored)))


# -- the delivery server's rules ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one delivery server does to one message."""

    host: str  # the return-path host: the domain of every MAIL FROM
    enforced_from: str | None  # the From address to put in, or None to keep the sender's


def plan(server: DeliveryServerView | None, domain: DomainView, settings: Settings) -> Plan:
    """The rules of docs/delivery.md "Return path":

    1. The From header is the sender's, unless the server has DomainSettings_EnforcedFrom and
       SenderInfoAsFrom is not Enabled: then the From address becomes the enforced one.
    2. The return-path host is the sender domain's own (``<Subdomain>.<domain>``, the CNAME of
       its DNS records), unless the From was enforced (rule 1) and SenderInfoAsMFrom is not
       Enabled: then it is the server's DomainSettings_MFrom, the MAIL FROM domain that goes
       with the enforced From (SPF-aligned with it under DMARC, RFC 7489 3.1.2).
    """
    own = _host(return_path_host(domain.name, domain.options, settings))
    if server is None or not server.enforced_from or server.senderinfo_as_from:
        return Plan(own, None)
    host = own
    if server.mfrom_domain and not server.senderinfo_as_mfrom:
        host = _host(server.mfrom_domain)
    return Plan(host, server.enforced_from.strip())


# -- the enforced From, signed again ------------------------------------------------------------


def rewrite_from(data: bytes, enforced: str, domain: DomainView) -> tuple[list[list[bytes]], bytes]:
    """Headers and body of the message with its From address replaced by ``enforced``.

    The signature made at submission covered the old From, so it is dropped (the caller signs
    again). The display name is kept; the sender's From becomes the Reply-To when the message
    has none, so replies still reach the sender (RFC 5322 3.6.2).
    """
    msg = parse(data)
    ours = re.compile(
        rb"(?:^|;)\s*d=" + re.escape(domain.name.encode()) + rb"\s*(?:;|$)", re.IGNORECASE
    )
    selector = re.compile(
        rb"(?:^|;)\s*s=" + re.escape(domain.dkim_selector.encode()) + rb"\s*(?:;|$)", re.I
    )
    headers: list[list[bytes]] = []
    dropped = False
    old_from: bytes | None = None
    for name, value in msg.headers:
        lname = name.lower()
        flat = re.sub(rb"\s+", b"", value)
        if (
            not dropped
            and lname == b"dkim-signature"
            and ours.search(flat)
            and selector.search(flat)
        ):
            dropped = True
            continue
        if lname == b"from" and old_from is None:
            old_from = value
            value = _replace_address(value, from_addresses(msg)[0], enforced)
        headers.append([name, value])
    if old_from is not None and not msg.values(b"reply-to"):
        # After From, where a reader expects it.
        at = next(i for i, (n, _) in enumerate(headers) if n.lower() == b"from")
        headers.insert(at + 1, [b"Reply-To", old_from])
    return headers, msg.body


def _replace_address(value: bytes, old: str, new: str) -> bytes:
    text = value.decode("utf-8", "surrogateescape")
    bracketed = f"<{old}>"
    at = text.rfind(bracketed)
    if at >= 0:
        text = text[:at] + f"<{new}>" + text[at + len(bracketed) :]
    else:
        name, _addr = email.utils.parseaddr(unfold(value))
        text = " " + email.utils.formataddr((name, new)) + "\r\n"
    return text.encode("utf-8", "surrogateescape")


# -- the call the delivery path makes -----------------------------------------------------------

Send = Callable[[Connection, str, list[str], bytes], Awaitable[transaction.Result]]


class ReturnPath:
    """One per delivery worker: ``await start()`` (loads the keys), then ``send`` for each
    message on each server, ``close()`` at the end."""

    def __init__(
        self, db: Database, box: SecretBox, settings: Settings, directory: Directory
    ) -> None:
        self.db, self.box, self.settings = db, box, settings
        self.directory = directory  # cached domain lookups: no database round trip per message
        self.keys: VerpKeys | None = None
        self._signer: DkimSigner | None = None  # made on first use: most servers enforce nothing

    async def start(self) -> None:
        self.keys = await load_keys(self.db, self.box, self.settings.security.return_path_secret)

    async def close(self) -> None:
        if self._signer is not None:
            signer, self._signer = self._signer, None
            await asyncio.to_thread(signer.close)

    async def send(
        self,
        conn: Connection,
        server: DeliveryServerView | None,
        message: QueuedMessage,
        rcpts: list[str],
        body: bytes | None = None,
        send: Send = transaction.send,
    ) -> transaction.Result:
        """Deliver ``message`` (or ``body``, a recipient variant of it) to ``rcpts`` on
        ``conn``: one transaction per recipient, each with its own VERP MAIL FROM. Indexes in
        the result refer to ``rcpts``, as ``transaction.send``'s do."""
        data = message.body if body is None else body
        domain = await self.directory.domain(message.domain_id)
        if transaction.is_null_sender(message.mail_from) or domain is None or self.keys is None:
            # A bounce stays a bounce (RFC 5321 4.5.5); a message of a vanished domain keeps
            # its stored sender.
            return await send(conn, message.mail_from, rcpts, data)
        rules = plan(server, domain, self.settings)
        if rules.enforced_from is not None:
            data = await self._enforce_from(data, rules.enforced_from, domain)
        try:
            senders = [self.keys.address(message.id, r, rules.host) for r in rcpts]
        except ValueError:
            log.warning("queue id is not a UUID; no VERP return path", message_id=message.id)
            return await send(conn, message.mail_from, rcpts, data)
        return await each(conn, senders, rcpts, data, send)

    async def _enforce_from(self, data: bytes, enforced: str, domain: DomainView) -> bytes:
        try:
            headers, body = rewrite_from(data, enforced, domain)
        except (MalformedMessage, IndexError):
            # Checked at submission, so not expected; never worth losing the message over.
            log.warning("From not enforced: unparseable message", domain_id=domain.id)
            return data
        if self._signer is None:
            self._signer = DkimSigner(1)
        signature = await self._signer.sign(
            domain.dkim_key, headers, body, domain.name, domain.dkim_selector
        )
        out = [signature[0] + b":" + signature[1]]
        out.extend(n + b":" + v for n, v in headers)
        return b"".join(out) + b"\r\n" + body


async def each(
    conn: Connection, senders: list[str], rcpts: list[str], body: bytes, send: Send
) -> transaction.Result:
    """One transaction per recipient on one connection, merged into one result.

    When the connection fails, the recipients not tried yet may go to the next server
    (``failover``); the one in flight does too unless its content was already handed over,
    in which case the server may hold it and it gets the failure as its reply (deferred).
    """
    merged = transaction.Result()
    for i, (sender, rcpt) in enumerate(zip(senders, rcpts, strict=True)):
        result = await send(conn, sender, [rcpt], body)
        if 0 in result.replies:
            merged.replies[i] = result.replies[0]
        if result.error is None:
            continue
        merged.error = result.error
        merged.stale = result.stale and i == 0
        if not result.failover and i not in merged.replies:
            merged.replies[i] = result.error
        merged.failover = True
        return merged
    return merged
