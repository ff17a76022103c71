"""Sender-domain API keys (001: emailgateway.addapi, getapis, deleteapi, replaceapi).

A key is the Bearer token of the public v1 routes (``/api/v1/email``, ``/api/v1/webhooks``,
``/api/v1/events``) for one sender domain. It is generated with 190 bits of entropy
(``eg_live_`` + 32 letters and digits), returned once, and stored as a SHA-256 hash; listings
show a hint (``eg_live_********abcd``). A domain may have several keys; ``replaceapi`` swaps all
of them for a single new one in one transaction. 002's spellings work too:
``EmailGateway.AddAPI``, ``ApiKeyId``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import owned_domain
from relay.secrets import hash_secret, mask_secret, new_api_key
from relay.store.db import fmt_dt
from relay.store.repos import api_keys as repo

MAX_DESCRIPTION = 255


def _description_and_domain(call: Call, *, listed: bool) -> tuple[str, int]:
    """Description and DomainID; both missing is reported at once ([1, 2]) as 001 shows."""
    p = call.params
    codes: list[int] = []
    texts: list[str] = []
    if not p.present("Description"):
        codes.append(1)
        texts.append("Missing required parameter (Description)")
    domain_id: int | None = None
    try:
        domain_id = p.int("DomainID")
    except ValueError:
        codes.append(3)
        texts.append("Domain not found or access denied")
    else:
        if domain_id is None:
            codes.append(2)
            texts.append("Missing required parameter (DomainID)")
    if codes:
        raise ApiError(codes if listed else codes[0], texts if listed else texts[0])
    assert domain_id is not None
    return (p.str("Description") or "")[:MAX_DESCRIPTION], domain_id


def _listing(row: Row) -> dict[str, Any]:
    return {
        "APIKeyID": row.id,
        "APIKey": row.key_hint,
        "Description": row.description,
        "DomainID": row.domain_id,
        "Status": row.status,
        "CreatedAt": fmt_dt(row.created_at),
    }


@command("emailgateway.addapi", auth="user")
async def add_api(call: Call) -> dict[str, Any]:
    """Create an API key for a sender domain; the key is in this response only.

    Parameters:
        Description (String, required): what the key is for.
        DomainID (Integer, required): the sender domain the key sends from.

    Errors:
        1: Missing required parameter (Description)
        2: Missing required parameter (DomainID)
        3: Domain not found or access denied
    """
    description, domain_id = _description_and_domain(call, listed=True)
    key = new_api_key()
    async with call.services.db.write() as conn:
        await owned_domain(conn, call, domain_id, [3], "Domain not found or access denied")
        row = await repo.create(
            conn,
            user_id=call.user_id,
            domain_id=domain_id,
            description=description,
            key_hash=hash_secret(key),
            key_hint=mask_secret(key),
        )
    return ok(
        NewAPIKeyID=row.id,
        APIKey={
            "APIKeyID": row.id,
            "APIKey": key,
            "Description": row.description,
            "DomainID": row.domain_id,
        },
    )


@command("emailgateway.getapis", auth="user")
async def get_apis(call: Call) -> dict[str, Any]:
    """List a sender domain's API keys. Keys are stored hashed: ``APIKey`` is a hint (the
    prefix and last four characters), never the key.

    Parameters:
        DomainID (Integer, required): the sender domain.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(2, "Domain not found or access denied") from None
    if domain_id is None:
        raise ApiError(1, "Missing required parameter (DomainID)")
    async with call.services.db.read() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or access denied")
        rows = await repo.list_for_domain(conn, domain_id)
    return ok(APIKeys=[_listing(r) for r in rows])


@command("emailgateway.deleteapi", auth="user")
async def delete_api(call: Call) -> dict[str, Any]:
    """Delete an API key: it stops authenticating at once.

    Parameters:
        APIKeyID (Integer, required): the key (002 spells it ApiKeyId).

    Errors:
        1: Missing required parameter (APIKeyID)
        2: API Key not found or access denied
    """
    try:
        key_id = call.params.int("APIKeyID")
    except ValueError:
        raise ApiError(2, "API Key not found or access denied") from None
    if key_id is None:
        raise ApiError(1, "Missing required parameter (APIKeyID)")
    async with call.services.db.write() as conn:
        if await repo.get_owned(conn, key_id, call.user_id) is None:
            raise ApiError(2, "API Key not found or access denied")
        await repo.disable(conn, key_id)
    return ok()


@command(
    "emailgateway.replaceapi",
    auth="user",
    # The document's answer to a failed transaction (the dispatcher gives it, see CommandSpec).
    storage_error=ApiError(
        4,
        "Atomic rotate failed — the transaction rolled back; no key was persisted. Safe to retry.",
    ),
)
async def replace_api(call: Call) -> dict[str, Any]:
    """Atomically rotate a sender domain's API key: every prior key row of the
    (user, domain) slot is hard-deleted and one new Enabled key inserted, in a single
    transaction. With no prior key it behaves like addapi. The new key is in this response
    only; the response's ``APIKey`` object has the shape 001 gives for this command.

    Parameters:
        DomainID (Integer, required): the sender domain; must be owned by the caller.
        Description (String, required): what the new key is for.

    Errors:
        1: Missing required parameter (Description)
        2: Missing required parameter (DomainID)
        3: Domain not found or not owned by the caller
        4: Atomic rotate failed — the transaction rolled back; no key was persisted. Safe to retry.
    """
    p = call.params
    if not p.present("Description"):
        raise ApiError(1, "Missing required parameter (Description)")
    try:
        domain_id = p.int("DomainID")
    except ValueError:
        raise ApiError(3, "Domain not found or not owned by the caller") from None
    if domain_id is None:
        raise ApiError(2, "Missing required parameter (DomainID)")
    description = (p.str("Description") or "")[:MAX_DESCRIPTION]
    key = new_api_key()
    async with call.services.db.write() as conn:
        if not await repo.lock_owned_domain(conn, domain_id, call.user_id):
            raise ApiError(3, "Domain not found or not owned by the caller")
        await repo.delete_slot(conn, call.user_id, domain_id)
        row = await repo.create(
            conn,
            user_id=call.user_id,
            domain_id=domain_id,
            description=description,
            key_hash=hash_secret(key),
            key_hint=mask_secret(key),
        )
    return ok(
        NewAPIKeyID=row.id,
        APIKey={
            "APIKeyID": str(row.id),
            "UserID": str(row.user_id),
            "DomainID": str(row.domain_id),
            "CreatedAt": fmt_dt(row.created_at),
            "APIKey": key,
            "Description": row.description,
            "Status": row.status,
            "Options": row.options or [],
        },
    )
