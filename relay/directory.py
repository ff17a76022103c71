"""The hot path's read model: what SMTP sessions and delivery workers look up, cached.

A credential check, a user or domain lookup and a suppression check cost a dictionary lookup
after the first miss. Entries are dropped by invalidation topics published by the admin app
(see ``Topics``) and expire after a TTL as a backstop. DKIM private keys are parsed once per
load, not once per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import and_, select

from relay.cache import MISSING, LocalBus, TTLCache
from relay.secrets import SecretBox
from relay.store import schema as t
from relay.store.db import Database


class Topics:
    """Invalidation topics and what their key is."""

    CREDENTIAL = "credential"  # SMTP username
    USER = "user"  # user id
    DOMAIN = "domain"  # gateway domain id
    SUPPRESSION = "suppression"  # "<user_id>:<email>" (user_id 0 = global), or "*"
    ROUTES = "routes"  # user group id, or "*"
    RELAY_DOMAINS = "relay_domains"  # "*"


@dataclass(frozen=True, slots=True)
class CredentialView:
    id: int
    username: str
    password_hash: str
    user_id: int
    domain_id: int
    status: str


@dataclass(frozen=True, slots=True)
class UserView:
    id: int
    email: str
    status: str
    trusted: bool
    verified: bool
    group_id: int
    send_limit_per_hour: int  # 0 = unlimited
    max_sender_domains: int  # 0 = unlimited

    @property
    def may_send(self) -> bool:
        return self.status == "Enabled" and self.trusted and self.verified


@dataclass(frozen=True, slots=True)
class DomainView:
    id: int
    user_id: int
    name: str
    status: str
    dkim_selector: str
    dkim_key: RSAPrivateKey
    options: dict[str, Any]
    # Hosts of the domain's DNS records that verification found published (the tracking
    # links use the domain's own tracking host only once it resolves to us).
    verified_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DeliveryServerView:
    id: int
    name: str
    host: str
    port: int
    secure: str  # "false" | "ssl" | "tls"
    timeout: int
    auth: bool
    username: str
    password: str = field(repr=False)  # in clear: never in a log line
    mfrom_domain: str
    enforced_from: str
    senderinfo_as_mfrom: bool
    senderinfo_as_from: bool
    # PowerMTA: X-Job / X-Virtual-MTA added at injection (mta/powermta/inject.py).
    powermta: bool = False
    powermta_vmta: str = ""


def _verified_hosts(meta: Any) -> frozenset[str]:
    records = (meta or {}).get("DNSRecords") or {}
    if not isinstance(records, dict):
        return frozenset()
    return frozenset(
        host.lower()
        for host, rec in records.items()
        if isinstance(rec, list) and len(rec) > 2 and rec[2] is True
    )


class Directory:
    def __init__(self, db: Database, bus: LocalBus, box: SecretBox, ttl: float = 300.0) -> None:
        self.db = db
        self.box = box
        self._credentials: TTLCache[str, CredentialView | None] = TTLCache(200_000, ttl)
        self._users: TTLCache[int, UserView | None] = TTLCache(100_000, ttl)
        self._domains: TTLCache[int, DomainView | None] = TTLCache(100_000, ttl)
        self._suppressed: TTLCache[tuple[int, str], str | None] = TTLCache(1_000_000, 60.0)
        self._routes: TTLCache[tuple[int, str], list[DeliveryServerView]] = TTLCache(10_000, ttl)
        bus.subscribe(Topics.CREDENTIAL, lambda k: self._credentials.pop(k))
        bus.subscribe(Topics.USER, lambda k: self._users.pop(int(k)))
        bus.subscribe(Topics.DOMAIN, lambda k: self._domains.pop(int(k)))
        bus.subscribe(Topics.SUPPRESSION, self._drop_suppression)
        bus.subscribe(Topics.ROUTES, lambda k: self._routes.clear())
        bus.on_reset(self.clear)

    def clear(self) -> None:
        for cache in (self._credentials, self._users, self._domains, self._suppressed):
            cache.clear()
        self._routes.clear()

    def _drop_suppression(self, key: str) -> None:
        if key == "*":
            self._suppressed.clear()
            return
        user_id, _, email = key.partition(":")
        if user_id == "0":
            # A global entry changes the answer for every account.
            self._suppressed.clear()
        else:
            self._suppressed.pop((int(user_id), email.lower()))

    # -- credentials ------------------------------------------------------------------------

    async def credential(self, username: str, *, retired: bool = False) -> CredentialView | None:
        """The Enabled credential; with ``retired``, a Deleted or Disabled one too (the policy
        tells a credential retired with its domain from a wrong one)."""
        hit = self._credentials.get(username)
        if hit is not MISSING:
            return hit if retired or hit is None or hit.status == "Enabled" else None
        c = t.smtp_credentials
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        c.c.id,
                        c.c.username,
                        c.c.password_hash,
                        c.c.user_id,
                        c.c.domain_id,
                        c.c.status,
                    ).where(c.c.username == username)
                )
            ).first()
        view = CredentialView(*row) if row is not None else None
        self._credentials.set(username, view)
        return view if retired or view is None or view.status == "Enabled" else None

    # -- users --------------------------------------------------------------------------------

    async def user(self, user_id: int) -> UserView | None:
        hit = self._users.get(user_id)
        if hit is not MISSING:
            return hit
        u, g = t.users, t.user_groups
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        u.c.id,
                        u.c.email,
                        u.c.status,
                        u.c.trusted,
                        u.c.verified,
                        u.c.group_id,
                        u.c.send_limit_per_hour,
                        u.c.max_sender_domains,
                        g.c.send_limit_per_hour.label("g_send"),
                        g.c.max_sender_domains.label("g_max"),
                    )
                    .join(g, g.c.id == u.c.group_id)
                    .where(u.c.id == user_id)
                )
            ).first()
        view = None
        if row is not None:
            view = UserView(
                id=row.id,
                email=row.email,
                status=row.status,
                trusted=bool(row.trusted),
                verified=bool(row.verified),
                group_id=row.group_id,
                send_limit_per_hour=(
                    row.send_limit_per_hour if row.send_limit_per_hour is not None else row.g_send
                ),
                max_sender_domains=(
                    row.max_sender_domains if row.max_sender_domains is not None else row.g_max
                ),
            )
        self._users.set(user_id, view)
        return view

    # -- gateway domains ----------------------------------------------------------------------

    async def domain(self, domain_id: int) -> DomainView | None:
        hit = self._domains.get(domain_id)
        if hit is not MISSING:
            return hit
        d = t.gateway_domains
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        d.c.id,
                        d.c.user_id,
                        d.c.name,
                        d.c.status,
                        d.c.dkim_selector,
                        d.c.dkim_private_key,
                        d.c.options,
                        d.c.verification_meta,
                    ).where(d.c.id == domain_id)
                )
            ).first()
        view = None
        if row is not None:
            key = load_pem_private_key(
                self.box.open(row.dkim_private_key).encode(),
                password=None,
                unsafe_skip_rsa_key_validation=True,  # our own generated key; skip the slow check
            )
            assert isinstance(key, RSAPrivateKey)
            view = DomainView(
                row.id,
                row.user_id,
                row.name,
                row.status,
                row.dkim_selector,
                key,
                dict(row.options or {}),
                _verified_hosts(row.verification_meta),
            )
        self._domains.set(domain_id, view)
        return view

    # -- suppression --------------------------------------------------------------------------

    async def suppression(self, user_id: int, email: str) -> str | None:
        """The reason ``email`` may not receive mail from this account, or None."""
        email = email.lower()
        key = (user_id, email)
        hit = self._suppressed.get(key)
        if hit is not MISSING:
            return hit
        s = t.suppressions
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(s.c.user_id, s.c.reason, s.c.source).where(
                        and_(s.c.email == email, s.c.user_id.in_((user_id, 0)))
                    )
                )
            ).all()
        reason = None
        for row in sorted(rows, key=lambda r: r.user_id):  # the global entry (0) wins
            reason = "global suppression list" if row.user_id == 0 else "account suppression list"
            break
        self._suppressed.set(key, reason)
        return reason

    # -- routing ------------------------------------------------------------------------------

    async def routes(
        self, group_id: int, channel: str = "Transactional"
    ) -> list[DeliveryServerView]:
        """Delivery servers assigned to a user group for a channel, in id order."""
        hit = self._routes.get((group_id, channel))
        if hit is not MISSING:
            return hit
        ds, a = t.delivery_servers, t.delivery_server_assignments
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(ds)
                    .join(a, a.c.server_id == ds.c.id)
                    .where(and_(a.c.group_id == group_id, a.c.channel == channel))
                    .order_by(ds.c.id)
                )
            ).all()
        views = [
            DeliveryServerView(
                id=r.id,
                name=r.name,
                host=r.host,
                port=r.port,
                secure=r.secure,
                timeout=r.timeout,
                auth=bool(r.auth),
                username=r.username,
                password=self.box.open(r.password) if r.password else "",
                mfrom_domain=r.mfrom_domain,
                enforced_from=r.enforced_from,
                senderinfo_as_mfrom=bool(r.senderinfo_as_mfrom),
                senderinfo_as_from=bool(r.senderinfo_as_from),
                powermta=bool(r.powermta),
                powermta_vmta=r.powermta_vmta,
            )
            for r in rows
        ]
        self._routes.set((group_id, channel), views)
        return views
