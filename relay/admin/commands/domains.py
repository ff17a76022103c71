"""Email-gateway sender domains (seed 001: emailgateway.*domain*)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Row

from relay.addresses import is_valid_domain, is_valid_sublabel
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
from relay.dkim import default_selector, generate_key
from relay.dns.records import build_records
from relay.store.db import fmt_dt
from relay.store.repos import domains as repo

STATUSES = ("Enabled", "Disabled", "Approval Pending")
TRACK_MERGE_CHARS = ("-", ".")


def options_body(options: dict[str, Any]) -> dict[str, Any]:
    """Options as the documents show them: the three flags, then any overrides that are set."""
    body: dict[str, Any] = {
        "LinkTracking": int(options.get("LinkTracking", 1)),
        "OpenTracking": int(options.get("OpenTracking", 1)),
        "UnsubscribeLink": int(options.get("UnsubscribeLink", 0)),
    }
    for key in ("CustomSubdomain", "CustomTrackPrefix", "TrackMerge", "HostingProvider"):
        if options.get(key):
            body[key] = options[key]
    if "TrackPrefixDisabled" in options:
        body["TrackPrefixDisabled"] = bool(options["TrackPrefixDisabled"])
    return body


def domain_body(row: Row) -> dict[str, Any]:
    records = (row.verification_meta or {}).get("DNSRecords", {})
    return {
        "DomainID": row.id,
        "SenderDomain": row.name,
        "Status": row.status,
        "Options": options_body(row.options or {}),
        "CreatedAt": fmt_dt(row.created_at),
        "VerificationMeta": {"DNSRecords": records},
    }


def parse_overrides(call: Call, code: int) -> dict[str, Any]:
    """Subdomain / TrackPrefix / TrackMerge / TrackPrefixDisabled, validated (001 adddomain)."""
    p = call.params
    out: dict[str, Any] = {}
    for param, key in (("Subdomain", "CustomSubdomain"), ("TrackPrefix", "CustomTrackPrefix")):
        if p.present(param):
            value = p.str(param) or ""
            if not is_valid_sublabel(value):
                raise ApiError([code], "Invalid subdomain or track prefix value")
            out[key] = value.lower()
    if p.present("TrackMerge"):
        merge = p.str("TrackMerge") or ""
        if merge not in TRACK_MERGE_CHARS:
            raise ApiError([code], "Invalid subdomain or track prefix value")
        out["TrackMerge"] = merge
    if p.present("TrackPrefixDisabled"):
        try:
            out["TrackPrefixDisabled"] = bool(p.bool("TrackPrefixDisabled"))
        except ValueError:
            raise ApiError([code], "Invalid subdomain or track prefix value") from None
    return out


def domain_id_param(call: Call, missing_code: int, not_found_code: int) -> int:
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(not_found_code, "Domain not found or access denied") from None
    if domain_id is None:
        raise ApiError(missing_code, "Missing required parameter (DomainID)")
    return domain_id


@command("emailgateway.adddomain", auth="user")
async def add_domain(call: Call) -> dict[str, Any]:
    """Add a sender domain (status Approval Pending) with a new DKIM key; the response carries
    the DNS records to publish.

    Parameters:
        DomainName (String, required): the domain, e.g. example.com.
        Subdomain (String): return-path subdomain override (letters, digits, hyphens; 32 max).
        TrackPrefix (String): tracking prefix override (letters, digits, hyphens; 32 max).
        TrackMerge (String): tracking merge character, "-" or ".".
        TrackPrefixDisabled (Integer): 1 to use no separate tracking host.

    Errors:
        1: Missing required parameter (DomainName)
        2: Invalid domain name format
        3: Maximum sender domains limit reached for user
        4: Invalid subdomain or track prefix value
        5: Domain already exists in this account
    """
    name = (call.params.str("DomainName") or "").lower().rstrip(".")
    if not name:
        raise ApiError([1], "Missing required parameter (DomainName)")
    if not is_valid_domain(name):
        raise ApiError([2], "Invalid domain name format")
    options: dict[str, Any] = {"LinkTracking": 1, "OpenTracking": 1, "UnsubscribeLink": 0}
    options.update(parse_overrides(call, 4))
    services = call.services
    user = await services.directory.user(call.user_id)
    assert user is not None
    # RSA key generation takes tens of milliseconds of CPU: keep it off the event loop.
    key = await asyncio.to_thread(generate_key, services.settings.dkim.key_bits)
    selector = default_selector(services.settings.dkim.selector)
    records = build_records(name, options, selector, key.public_b64, services.settings)
    async with services.db.write() as conn:
        if (
            user.max_sender_domains
            and await repo.count_live(conn, call.user_id) >= user.max_sender_domains
        ):
            raise ApiError([3], "Maximum sender domains limit reached for user")
        if await repo.find_live(conn, call.user_id, name) is not None:
            raise ApiError([5], "Domain already exists in this account")
        domain_id = await repo.create(
            conn,
            user_id=call.user_id,
            name=name,
            status="Approval Pending",
            options=options,
            dkim_selector=selector,
            dkim_private_key=services.box.seal(key.private_pem),
            dkim_public_key=key.public_b64,
            verification_meta={"DNSRecords": records},
            policy_meta=[],
        )
        row = await repo.get(conn, domain_id)
    assert row is not None
    body = domain_body(row)
    return ok(
        NewSenderDomainID=domain_id, Domain=body, DNSRecords=body["VerificationMeta"]["DNSRecords"]
    )


@command("emailgateway.getdomain", auth="user")
async def get_domain(call: Call) -> dict[str, Any]:
    """One sender domain of the caller, with its DNS records.

    Parameters:
        DomainID (Integer, required): the sender domain.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.read() as conn:
        row = await repo.get(conn, domain_id, user_id=call.user_id)
    if row is None:
        raise ApiError(2, "Domain not found or access denied")
    body = domain_body(row)
    return ok(Domain=body, DNSRecords=body["VerificationMeta"]["DNSRecords"])


@command("emailgateway.setdomainstatus", auth="admin")
async def set_domain_status(call: Call) -> dict[str, Any]:
    """Set a sender domain's status (admin). Only Enabled domains may send.

    Parameters:
        DomainID (Integer, required): the sender domain.
        Status (String, required): Enabled, Disabled or Approval Pending.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found
        3: Invalid Status (Enabled, Disabled or Approval Pending)
    """
    domain_id = domain_id_param(call, 1, 2)
    status = call.params.str("Status") or ""
    match = {s.lower(): s for s in STATUSES}.get(status.lower())
    if match is None:
        raise ApiError(3, "Invalid Status (Enabled, Disabled or Approval Pending)")
    async with call.services.db.write() as conn:
        if not await repo.update_fields(conn, domain_id, status=match):
            raise ApiError(2, "Domain not found")
        row = await repo.get(conn, domain_id)
    assert row is not None
    await call.services.bus.publish(Topics.DOMAIN, domain_id)
    await call.services.bus.publish(Topics.RELAY_DOMAINS, "*")
    return ok(Domain=domain_body(row))
