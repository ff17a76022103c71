"""Who is calling: admin key, user API key or session, or a sender-domain API key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select

from relay.admin.params import Params
from relay.secrets import hash_secret
from relay.services import Services
from relay.store import schema as t
from relay.store.db import now


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "admin" | "user" | "sender_key" | "anonymous"
    user_id: int | None = None
    domain_id: int | None = None
    api_key_id: int | None = None
    # How a user proved it: "api_key" or "session" (the audit log says which).
    via: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


ANONYMOUS = Principal("anonymous")


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def is_admin_key(services: Services, candidate: str | None) -> bool:
    expected = services.settings.admin.api_key
    if not candidate or not expected:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


def admin_from(services: Services, request: web.Request, params: Params) -> Principal | None:
    if is_admin_key(services, params.str("AdminAPIKey")) or is_admin_key(
        services, bearer_token(request)
    ):
        return Principal("admin")
    return None


async def user_from(services: Services, params: Params) -> Principal | None:
    """A user by APIKey or SessionID; None if neither matches an Enabled account: the key or
    session of a Disabled (or deleted) user is refused exactly like a wrong one."""
    u = t.users
    api_key = params.str("APIKey")
    session_id = params.str("SessionID")
    async with services.db.read() as conn:
        if api_key:
            row = (
                await conn.execute(
                    select(u.c.id, u.c.status).where(u.c.api_key_hash == hash_secret(api_key))
                )
            ).first()
            if row is not None and row.status == "Enabled":
                return Principal("user", user_id=row.id, via="api_key")
        if session_id:
            s = t.sessions
            row = (
                await conn.execute(
                    select(s.c.user_id, u.c.status)
                    .join(u, u.c.id == s.c.user_id)
                    .where(s.c.id_hash == hash_secret(session_id), s.c.expires_at > now())
                )
            ).first()
            if row is not None and row.status == "Enabled":
                return Principal("user", user_id=row.user_id, via="session")
    return None


async def sender_key_from(services: Services, token: str | None) -> Principal | None:
    """A sender-domain API key (the public v1 routes' Bearer token), if Enabled.

    Whether its domain and user may still act is each command's check: the documents give
    those failures their own codes ("Invalid sender domain", "Invalid user account").
    """
    if not token:
        return None
    k = t.api_keys
    async with services.db.read() as conn:
        row = (
            await conn.execute(
                select(k.c.id, k.c.user_id, k.c.domain_id).where(
                    k.c.key_hash == hash_secret(token), k.c.status == "Enabled"
                )
            )
        ).first()
    if row is None:
        return None
    return Principal("sender_key", user_id=row.user_id, domain_id=row.domain_id, api_key_id=row.id)
