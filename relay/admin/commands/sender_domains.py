"""User sender domains (seed 003: user.senderdomain*), v1 routes and /api.php commands.

All of them: User API key (APIKey or SessionID), the v1 error shape
``{"Errors": [{"Code": n, "Message": "..."}]}`` with an HTTP status, 100 requests per 60 s per
user. Another user's domain is "not found", never "forbidden": ownership does not leak.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import Row

from relay.addresses import ascii_domain, is_valid_domain, is_valid_sublabel
from relay.admin.dispatcher import Call, command
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import checker, options_body
from relay.dns.records import same_records, sender_domain_records
from relay.dns.verify import status_after, verify_records
from relay.store.db import fmt_dt
from relay.store.repos import sender_domains as repo
from relay.store.repos import users as users_repo

log = structlog.get_logger("relay.admin.sender_domains")

PATH = "/api/v1/user.senderdomain"
FLAGS = (("LinkTracking", 1), ("OpenTracking", 1), ("UnsubscribeLink", 0))
NOT_FOUND = "Sender domain not found"
INVALID_OVERRIDE = (
    "Invalid CustomSubdomain or CustomTrackPrefix. Letters, digits, and hyphens only; "
    "max 32 chars; no leading/trailing hyphens"
)


def success(**fields: Any) -> dict[str, Any]:
    return {"Success": True, **fields}


def records_of(row: Row) -> dict[str, list[Any]]:
    return dict((row.verification_meta or {}).get("DNSRecords") or {})


def domain_body(row: Row) -> dict[str, Any]:
    meta = dict(row.verification_meta or {})
    meta["DNSRecords"] = meta.get("DNSRecords") or []
    return {
        "DomainID": str(row.id),
        "SenderDomain": row.domain,
        "UserID": str(row.user_id),
        "CreatedAt": fmt_dt(row.created_at),
        "Status": row.status,
        "VerificationMeta": meta,
        "PolicyMeta": row.policy_meta or [],
        "Options": options_body(row.options or {}),
    }


def domain_id_param(call: Call) -> int:
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(2, NOT_FOUND, status=404) from None
    if domain_id is None:
        raise ApiError(1, "Missing DomainID parameter", status=400)
    return domain_id


async def owned(call: Call, domain_id: int) -> Row:
    async with call.services.db.read() as conn:
        row = await repo.get_live(conn, domain_id, call.user_id)
    if row is None:
        raise ApiError(2, NOT_FOUND, status=404)
    return row


def flag_param(call: Call, name: str) -> int | None:
    try:
        value = call.params.bool(name)
    except ValueError:
        raise ApiError(6, f"Invalid {name} value (true or false)", status=400) from None
    return None if value is None else int(value)


def override_param(call: Call, name: str) -> str | None:
    """None when absent; "" to return to the global default; else a validated label."""
    if call.params.raw(name) is None:
        return None
    value = call.params.str(name)  # None: given, but not text
    if value is None or (value and not is_valid_sublabel(value)):
        raise ApiError(
            6, INVALID_OVERRIDE.replace("CustomSubdomain or CustomTrackPrefix", name), status=400
        )
    return value.lower()


def apply_overrides(call: Call, options: dict[str, Any]) -> None:
    for name in ("CustomSubdomain", "CustomTrackPrefix"):
        value = override_param(call, name)
        if value is None:
            continue
        if value:
            options[name] = value
        else:
            options.pop(name, None)


@command(
    "user.senderdomain.list",
    auth="user",
    style="v1",
    rate_limited=True,
    routes=(("GET", "/api/v1/user.senderdomains"),),
)
async def list_sender_domains(call: Call) -> dict[str, Any]:
    """The caller's sender domains (deleted ones excluded); ``SenderDomains: []`` when none.

    Errors:
    (none — this endpoint has no business-logic error codes)
    """
    async with call.services.db.read() as conn:
        rows = await repo.list_live(conn, call.user_id)
    return success(SenderDomains=[domain_body(r) for r in rows])


@command(
    "user.senderdomain.get", auth="user", style="v1", rate_limited=True, routes=(("GET", PATH),)
)
async def get_sender_domain(call: Call) -> dict[str, Any]:
    """One of the caller's sender domains.

    Errors:
    1: Missing DomainID parameter
    2: Sender domain not found (also returned when the domain exists but is owned by another user — to avoid leaking ownership)
    """  # noqa: E501
    row = await owned(call, domain_id_param(call))
    return success(SenderDomain=domain_body(row))


@command(
    "user.senderdomain.create", auth="user", style="v1", rate_limited=True, routes=(("POST", PATH),)
)
async def create_sender_domain(call: Call) -> dict[str, Any]:
    """Register a sender domain, in status Approval Pending, with the DNS records to publish.

    VerificationMeta.DNSRecords lists the records (``host: [type, value]`` until first
    verified). Creating a domain the caller already has (for instance one deleted before)
    refreshes that row to Approval Pending with the new options and records instead of
    failing. The number of live sender domains is limited by the user's (else the user
    group's) MaxSenderDomains; 0 means unlimited. A SenderDomain that is not a domain name is
    refused with code 7. An internationalized name (U-labels) is stored and answered in its
    ASCII form (A-labels). A user sender domain authorizes nothing the relay does (no
    credentials, no relay checks), so several accounts may have the same one Enabled.

    Errors:
    1: Missing SenderDomain parameter
    4: localhost is not a valid sender domain
    5: Sender domain limit reached for your account (returned with HTTP 403)
    6: Invalid CustomSubdomain or CustomTrackPrefix (letters, digits, and hyphens only; max 32 chars; no leading/trailing hyphens)
    7: Sender domain create process failed (returned with HTTP 400)
    8: Sender domain could not be retrieved after creation (returned with HTTP 500)
    """  # noqa: E501
    given = (call.params.str("SenderDomain") or "").rstrip(".")
    if not given:
        raise ApiError(1, "Missing SenderDomain parameter", status=400)
    name = ascii_domain(given) or given.lower()
    # RFC 6761 6.3: localhost and every name under it are loopback, never a mail domain.
    if name == "localhost" or name.endswith(".localhost"):
        raise ApiError(4, "localhost is not a valid sender domain", status=400)
    if not is_valid_domain(name):
        raise ApiError(
            7, "Sender domain create process failed: not a valid domain name", status=400
        )
    options: dict[str, Any] = {}
    for flag, default in FLAGS:
        value = flag_param(call, flag)
        options[flag] = default if value is None else value
    apply_overrides(call, options)
    settings = call.services.settings
    records = sender_domain_records(name, options, settings)
    async with call.services.db.write() as conn:
        limit = await users_repo.sender_domain_limit(conn, call.user_id)
        if limit and await repo.count_live_other_than(conn, call.user_id, name) >= limit:
            raise ApiError(5, "Sender domain limit reached for your account", status=403)
        domain_id = await repo.upsert(
            conn,
            user_id=call.user_id,
            domain=name,
            options=options,
            verification_meta={"DNSRecords": records},
        )
        row = await repo.get_any(conn, domain_id)
    if row is None:
        raise ApiError(8, "Sender domain could not be retrieved after creation", status=500)
    await checker(call).forget((host, str(rec[0])) for host, rec in records.items())
    return success(DomainID=row.id, SenderDomain=domain_body(row))


@command(
    "user.senderdomain.update",
    auth="user",
    style="v1",
    rate_limited=True,
    routes=(("PATCH", PATH),),
)
async def update_sender_domain(call: Call) -> dict[str, Any]:
    """Change a sender domain's options; only the fields given change (partial update).

    On PATCH every parameter (APIKey and DomainID too) comes from the JSON body.
    UseTrackingSubdomain is stored as its inverse, TrackPrefixDisabled (also accepted as is).
    An empty CustomSubdomain / CustomTrackPrefix returns to the global default. When a
    DNS-affecting field changes the records, they are regenerated (never probed again), an
    Enabled domain goes back to Approval Pending, the cached DNS answers for its hosts are
    dropped, and ``DnsRegenerated`` is true.

    Errors:
    1: Missing DomainID parameter
    2: Sender domain not found (also returned when the domain exists but is owned by another user)
    6: Invalid CustomSubdomain or CustomTrackPrefix (letters, digits, and hyphens only; max 32 chars; no leading/trailing hyphens)
    7: Sender domain could not be retrieved after update (returned with HTTP 500)
    """  # noqa: E501
    domain_id = domain_id_param(call)
    changes: dict[str, Any] = {}
    for flag, _default in FLAGS:
        value = flag_param(call, flag)
        if value is not None:
            changes[flag] = value
    use_tracking = flag_param(call, "UseTrackingSubdomain")
    disabled = flag_param(call, "TrackPrefixDisabled")
    if use_tracking is not None:
        changes["TrackPrefixDisabled"] = not use_tracking
    elif disabled is not None:
        changes["TrackPrefixDisabled"] = bool(disabled)
    overrides: dict[str, Any] = {}
    apply_overrides(call, overrides)
    removed = [
        name
        for name in ("CustomSubdomain", "CustomTrackPrefix")
        if call.params.raw(name) is not None and name not in overrides
    ]
    settings = call.services.settings
    async with call.services.db.write() as conn:
        row = await repo.get_live(conn, domain_id, call.user_id)
        if row is None:
            raise ApiError(2, NOT_FOUND, status=404)
        options = dict(row.options or {})
        options.update(changes)
        options.update(overrides)
        for name in removed:
            options.pop(name, None)
        old_records = records_of(row)
        new_records = sender_domain_records(row.domain, options, settings)
        regenerate = not same_records(old_records, new_records)
        values: dict[str, Any] = {"options": options}
        if regenerate:
            meta = dict(row.verification_meta or {})
            meta["DNSRecords"] = new_records
            values["verification_meta"] = meta
            if row.status == "Enabled":
                values["status"] = "Approval Pending"
        await repo.update_fields(conn, domain_id, **values)
        updated = await repo.get_live(conn, domain_id, call.user_id)
    if updated is None:
        raise ApiError(7, "Sender domain could not be retrieved after update", status=500)
    if regenerate:
        await checker(call).forget(
            (host, str(rec[0])) for host, rec in (*old_records.items(), *new_records.items())
        )
    return success(DnsRegenerated=regenerate, SenderDomain=domain_body(updated))


@command(
    "user.senderdomain.delete",
    auth="user",
    style="v1",
    rate_limited=True,
    routes=(("DELETE", PATH),),
)
async def delete_sender_domain(call: Call) -> dict[str, Any]:
    """Delete a sender domain: a soft delete (status Deleted); Get and List stop showing it.

    Errors:
    1: Missing DomainID parameter
    2: Sender domain not found (also returned when the domain exists but is owned by another user)
    """
    domain_id = domain_id_param(call)
    async with call.services.db.write() as conn:
        deleted = await repo.soft_delete(conn, domain_id, call.user_id)
    if not deleted:
        raise ApiError(2, NOT_FOUND, status=404)
    log.info("sender domain deleted", domain_id=domain_id, user_id=call.user_id)
    return success()


@command(
    "user.senderdomain.verify",
    auth="user",
    style="v1",
    rate_limited=True,
    routes=(("POST", f"{PATH}.verify"),),
)
async def verify_sender_domain(call: Call) -> dict[str, Any]:
    """Look up every expected record live and store the result.

    Answers are cached 60 s (``dns.cache_ttl``; in Redis when configured), so two calls in
    quick succession give the same outcome. Status becomes Enabled when every required record
    resolves correctly (DMARC is advisory) and Approval Pending otherwise, except that a
    timeout or SERVFAIL does not demote an Enabled domain and a Disabled domain stays
    Disabled. The per-record flags are merged into VerificationMeta (other keys kept); the
    database is not written when neither the status nor any flag changed.

    Errors:
    1: Missing DomainID parameter
    2: Sender domain not found (also returned when the domain exists but is owned by another user)
    """
    domain_id = domain_id_param(call)
    row = await owned(call, domain_id)
    records = records_of(row) or sender_domain_records(
        row.domain, row.options or {}, call.services.settings
    )
    outcome = await verify_records(checker(call), records)
    status = status_after(row.status, outcome)
    if status != row.status or outcome.records != records_of(row):
        async with call.services.db.write() as conn:
            current = await repo.get_live(conn, domain_id, call.user_id)
            if current is None:
                raise ApiError(2, NOT_FOUND, status=404)
            # Persist only if nothing changed underneath while DNS was being asked.
            if current.status == row.status and same_records(records_of(current), records_of(row)):
                meta = dict(current.verification_meta or {})
                meta["DNSRecords"] = outcome.records
                await repo.update_fields(conn, domain_id, verification_meta=meta, status=status)
            else:
                status = current.status
    return success(
        DomainID=row.id,
        IsVerified=outcome.all_required,
        Status=status,
        DNSRecords=outcome.records,
    )


@command(
    "user.senderdomain.dns",
    auth="user",
    style="v1",
    rate_limited=True,
    routes=(("GET", f"{PATH}.dns"),),
)
async def sender_domain_dns(call: Call) -> dict[str, Any]:
    """The records the caller must publish: ``{host: {Type, Value, IsVerified}}`` (read-only).

    IsVerified is null when the record was never probed, else the result of the last
    user.senderdomain.verify. When nothing is stored, the template is generated for display
    and not saved.

    Errors:
    1: Missing DomainID parameter
    2: Sender domain not found (also returned when the domain exists but is owned by another user)
    """
    row = await owned(call, domain_id_param(call))
    records = records_of(row) or sender_domain_records(
        row.domain, row.options or {}, call.services.settings
    )
    return success(
        DomainID=row.id,
        SenderDomain=row.domain,
        DNSRecords={
            host: {
                "Type": rec[0],
                "Value": rec[1],
                "IsVerified": rec[2] if len(rec) > 2 else None,
            }
            for host, rec in records.items()
        },
    )
