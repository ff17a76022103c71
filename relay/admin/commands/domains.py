"""Email-gateway sender domains (seed 001: emailgateway.*domain*)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import structlog
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from relay import events
from relay.addresses import ascii_domain, has_control_chars, is_valid_sublabel
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import checker, domain_id_param, options_body, owned_domain
from relay.directory import Topics
from relay.dkim import default_selector, generate_key
from relay.dns.records import build_records, same_records
from relay.dns.verify import status_after, verify_records
from relay.queue import control as queue_control
from relay.secrets import new_signing_key
from relay.store.db import fmt_dt
from relay.store.repos import domains as repo
from relay.store.repos import events as events_repo
from relay.store.repos import users as users_repo

log = structlog.get_logger("relay.admin.domains")

STATUSES = ("Enabled", "Disabled", "Approval Pending")
TRACK_MERGE_CHARS = ("-", ".")
FLAGS = ("LinkTracking", "OpenTracking", "UnsubscribeLink")
# The documents' "truthy" values of WithCounts, exactly (anything else: legacy shape).
WITH_COUNTS_TRUE = (1, "1", "true", "yes", True)
STATS_WINDOW = 7 * 24 * 3600
CLEARED_REASON = "Queue cleared by the account owner"
INVALID_OVERRIDE = "Invalid subdomain or track prefix value"


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


def legacy_row(row: Row) -> dict[str, Any]:
    """One getdomains row, in the pre-#1996 shape (string DomainID, PHP-style empty arrays)."""
    meta = dict(row.verification_meta or {})
    meta["DNSRecords"] = meta.get("DNSRecords") or []
    return {
        "DomainID": str(row.id),
        "SenderDomain": row.name,
        "CreatedAt": fmt_dt(row.created_at),
        "Status": row.status,
        "VerificationMeta": meta,
        "PolicyMeta": row.policy_meta or [],
        "Options": options_body(row.options or {}),
    }


def parse_overrides(call: Call, code: int) -> dict[str, Any]:
    """Subdomain / TrackPrefix / TrackMerge / TrackPrefixDisabled, validated (001 adddomain)."""
    p = call.params
    out: dict[str, Any] = {}
    for param, key in (("Subdomain", "CustomSubdomain"), ("TrackPrefix", "CustomTrackPrefix")):
        if p.present(param):
            value = p.str(param) or ""
            if not is_valid_sublabel(value):
                raise ApiError([code], INVALID_OVERRIDE)
            out[key] = value.lower()
    if p.present("TrackMerge"):
        merge = p.str("TrackMerge") or ""
        if merge not in TRACK_MERGE_CHARS:
            raise ApiError([code], INVALID_OVERRIDE)
        out["TrackMerge"] = merge
    if p.present("TrackPrefixDisabled"):
        try:
            out["TrackPrefixDisabled"] = bool(p.bool("TrackPrefixDisabled"))
        except ValueError:
            raise ApiError([code], INVALID_OVERRIDE) from None
    return out


def parse_update(call: Call) -> dict[str, Any]:
    """The options updatedomain changes: name -> new value, or None to remove the override.

    Only parameters that are given change (a partial update). An empty Subdomain, TrackPrefix,
    TrackMerge or HostingProvider removes the override: back to the global default.
    """
    p = call.params
    code = 6

    def given(name: str) -> bool:
        return p.raw(name) is not None

    out: dict[str, Any] = {}
    for name in (*FLAGS, "TrackPrefixDisabled"):
        if given(name) and p.raw(name) != "":
            try:
                value = bool(p.bool(name))
            except ValueError:
                raise ApiError(code, f"Invalid {name} value (1 or 0)") from None
            out[name] = value if name == "TrackPrefixDisabled" else int(value)
    # p.str() is None for a value given but not text (an object, a list, malformed).
    for param, key in (("Subdomain", "CustomSubdomain"), ("TrackPrefix", "CustomTrackPrefix")):
        if given(param):
            text = p.str(param)
            if text is None or (text and not is_valid_sublabel(text)):
                raise ApiError(code, INVALID_OVERRIDE)
            out[key] = text.lower() or None
    if given("TrackMerge"):
        merge = p.str("TrackMerge")
        if merge is None or (merge and merge not in TRACK_MERGE_CHARS):
            raise ApiError(code, INVALID_OVERRIDE)
        out["TrackMerge"] = merge or None
    if given("HostingProvider"):
        provider = p.str("HostingProvider")
        if provider is None or len(provider) > 255 or has_control_chars(provider):
            raise ApiError(code, "Invalid HostingProvider value")
        out["HostingProvider"] = provider or None
    return out


def records_of(row: Row) -> dict[str, list[Any]]:
    return dict((row.verification_meta or {}).get("DNSRecords") or {})


def enabled_elsewhere_error(code: int) -> ApiError:
    return ApiError(code, "The domain name is Enabled for another account")


async def publish_domain_change(call: Call, domain_id: int, status_changed: bool) -> None:
    await call.services.bus.publish(Topics.DOMAIN, domain_id)
    if status_changed:
        await call.services.bus.publish(Topics.RELAY_DOMAINS, "*")


@command("emailgateway.adddomain", auth="user")
async def add_domain(call: Call) -> dict[str, Any]:
    """Add a sender domain to the caller's account, in status Approval Pending.

    Generates the domain's DKIM key and returns the DNS records to publish (``DNSRecords``,
    ``host: [type, value, verified]``). Subdomain / TrackPrefix / TrackMerge /
    TrackPrefixDisabled override the global defaults for the return-path and tracking hosts.
    The number of live domains is limited by the user's (else the user group's)
    MaxSenderDomains; 0 means unlimited.

    A domain name may be added by several accounts (adding proves nothing; a squatter adding
    it first must not lock the owner out), but it is Enabled for one account at a time:
    emailgateway.verifydomain decides, from the records the domain's DNS publishes. An
    internationalized name (U-labels, ``bücher.example``) is stored and answered in its ASCII
    form (A-labels, ``xn--bcher-kva.example``; IDNA 2008 with the UTS #46 mapping), the form
    its DNS records use.

    Parameters:
    DomainName (String, required): the domain, e.g. example.com or bücher.example.
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
    given = (call.params.str("DomainName") or "").rstrip(".")
    if not given:
        raise ApiError([1], "Missing required parameter (DomainName)")
    name = ascii_domain(given)
    if name is None:
        raise ApiError([2], "Invalid domain name format")
    options: dict[str, Any] = {"LinkTracking": 1, "OpenTracking": 1, "UnsubscribeLink": 0}
    options.update(parse_overrides(call, 4))
    services = call.services
    # RSA key generation takes tens of milliseconds of CPU: keep it off the event loop.
    key = await asyncio.to_thread(generate_key, services.settings.dkim.key_bits)
    selector = default_selector(services.settings.dkim.selector)
    records = build_records(name, options, selector, key.public_b64, services.settings)
    async with services.db.write() as conn:
        limit = await users_repo.sender_domain_limit(conn, call.user_id)
        if limit and await repo.count_live(conn, call.user_id) >= limit:
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
            # Its own webhook signing key from the start (relay/webhooks/keys.py).
            signing_key=services.box.seal(new_signing_key()),
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
    """One of the caller's sender domains, with its options and DNS records.

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


@command("emailgateway.updatedomain", auth="user")
async def update_domain(call: Call) -> dict[str, Any]:
    """Change a sender domain's settings; only the parameters given change.

    LinkTracking / OpenTracking / UnsubscribeLink / TrackPrefixDisabled take 1 or 0;
    Subdomain / TrackPrefix take letters, digits and hyphens (1-32, no hyphen at either end),
    TrackMerge ``-`` or ``.``; an empty Subdomain, TrackPrefix, TrackMerge or HostingProvider
    returns to the global default. When the change alters the DNS records the domain must
    publish (return-path or tracking host), the records are regenerated (records that stay the
    same keep their verified flag), an Enabled domain goes back to Approval Pending until it
    is verified again, and ``SubdomainChanged`` is true. A Disabled domain stays Disabled.

    Errors:
    1: Missing required parameter (DomainID)
    5: Domain not found or access denied
    6: Invalid subdomain or track prefix value
    """
    domain_id = domain_id_param(call, 1, 5)
    changes = parse_update(call)
    settings = call.services.settings
    async with call.services.db.write() as conn:
        row = await repo.get(conn, domain_id, user_id=call.user_id)
        if row is None:
            raise ApiError(5, "Domain not found or access denied")
        options = dict(row.options or {})
        for key, value in changes.items():
            if value is None:
                options.pop(key, None)
            else:
                options[key] = value
        meta = dict(row.verification_meta or {})
        old_records = meta.get("DNSRecords") or {}
        new_records = build_records(
            row.name, options, row.dkim_selector, row.dkim_public_key, settings, old_records
        )
        dns_changed = not same_records(old_records, new_records)
        values: dict[str, Any] = {"options": options}
        status = row.status
        if dns_changed:
            meta["DNSRecords"] = new_records
            values["verification_meta"] = meta
            if status == "Enabled":
                status = values["status"] = "Approval Pending"
        await repo.update_fields(conn, domain_id, **values)
        updated = await repo.get(conn, domain_id)
    assert updated is not None
    await publish_domain_change(call, domain_id, status != row.status)
    if dns_changed:
        # The next verification must look again, not reuse answers about the old layout.
        await checker(call).forget(
            (host, str(rec[0])) for host, rec in (*old_records.items(), *new_records.items())
        )
    body = domain_body(updated)
    return ok(
        Domain=body,
        DNSRecords=body["VerificationMeta"]["DNSRecords"],
        SubdomainChanged=dns_changed,
    )


@command("emailgateway.verifydomain", auth="user")
async def verify_domain(call: Call) -> dict[str, Any]:
    """Look up the domain's DNS records live and update its status.

    Every record is looked up through the configured resolvers (answers cached for
    ``dns.cache_ttl`` seconds, shared through Redis when configured). The domain becomes
    Enabled when every required record matches (DMARC is advisory: reported, never required)
    and Approval Pending otherwise; a lookup that times out or fails counts as not verified
    but does not demote an Enabled domain, and a Disabled domain stays Disabled. The
    per-record flags are stored; nothing is written when nothing changed.

    A domain name is Enabled for one account at a time. When another account's domain of the
    same name is Enabled, its records are looked up too: if they no longer verify (its DNS
    now publishes this domain's records, DKIM key included), that domain goes back to Approval
    Pending and this one is Enabled; if they still verify, this one stays Approval Pending and
    the answer is error 3 (the per-record flags are stored all the same).

    Errors:
    1: Missing required parameter (DomainID)
    2: Domain not found or access denied
    3: The domain name is Enabled for another account (not in the documents)
    """
    domain_id = domain_id_param(call, 1, 2)
    db = call.services.db
    async with db.read() as conn:
        row = await repo.get(conn, domain_id, user_id=call.user_id)
    if row is None:
        raise ApiError(2, "Domain not found or access denied")
    records = records_of(row)
    outcome = await verify_records(checker(call), records)
    status = status_after(row.status, outcome)
    # A name is Enabled for one account at a time; verification decides who (docs/dns.md).
    holder = taken_over = None
    if status == "Enabled" and row.status != "Enabled":
        async with db.read() as conn:
            holder = await repo.enabled_elsewhere(conn, row.name, domain_id)
        if holder is not None:
            theirs = await verify_records(checker(call), records_of(holder))
            if status_after("Enabled", theirs) == "Enabled":
                status = row.status  # their records are still published: they keep it
            else:
                taken_over = theirs
    status_changed = False
    try:
        if status != row.status or outcome.records != records:
            async with db.write() as conn:
                current = await repo.get(conn, domain_id, user_id=call.user_id)
                if current is None:
                    raise ApiError(2, "Domain not found or access denied")
                meta = dict(current.verification_meta or {})
                # Only if the expected records did not change while we were looking them up.
                if same_records(records_of(current), records) and current.status == row.status:
                    if holder is not None and taken_over is not None:
                        their_meta = {**(holder.verification_meta or {})}
                        their_meta["DNSRecords"] = taken_over.records
                        await repo.demote(conn, holder.id, their_meta)
                    meta["DNSRecords"] = outcome.records
                    await repo.update_fields(conn, domain_id, verification_meta=meta, status=status)
                    status_changed = status != row.status
                else:
                    status = current.status
    except IntegrityError:
        # Another account's domain of this name became Enabled meanwhile: the index decided.
        raise enabled_elsewhere_error(3) from None
    if status_changed:
        if taken_over is not None and holder is not None:
            log.info("domain taken over", domain=row.name, domain_id=domain_id, from_id=holder.id)
            await publish_domain_change(call, holder.id, True)
        await publish_domain_change(call, domain_id, True)
    if holder is not None and taken_over is None:
        raise enabled_elsewhere_error(3)
    return ok(
        Domain={"DomainID": row.id, "SenderDomain": row.name, "Status": status},
        DNSVerificationResults=outcome.records,
    )


def with_counts(value: Any) -> bool:
    # bool first: True == 1 in Python, and "1" must not match the integer.
    if isinstance(value, bool):
        return value
    return any(type(value) is type(t) and value == t for t in WITH_COUNTS_TRUE)


def iso_utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@command("emailgateway.getdomains", auth="user")
async def get_domains(call: Call) -> dict[str, Any]:
    """Every live sender domain of the caller, in the legacy shape (string DomainID).

    With WithCounts truthy (1, '1', 'true', 'yes', true) each row also carries APIKeyCount,
    SMTPCount and WebhookCount (Enabled rows, one SQL aggregation for all domains) and, over
    the last 7 days of the event log, Sent7d ('accepted' events), BounceRate7d
    (bounced recipients / sent x 100, 2 decimals, 0 when nothing was sent) and LastActivityAt
    (newest event, ISO 8601 UTC, null when none). Any other WithCounts value: no enrichment.

    Errors:
    0: Success
    """
    enrich = with_counts(call.params.raw("WithCounts"))
    async with call.services.db.read() as conn:
        rows = await repo.list_for_user(conn, call.user_id)
        if enrich:
            counts = await repo.resource_counts(conn, call.user_id)
            since = time.time() - STATS_WINDOW
            q = events_repo.EventQuery(
                call.user_id, since=since, events=(events.ACCEPTED, events.BOUNCED)
            )
            found = await events_repo.tally(conn, q, ("domain_id", "event"), unique=True)
            last = await events_repo.last_activity(conn, call.user_id, since)
    domains = []
    for row in rows:
        item = legacy_row(row)
        if enrich:
            keys, smtps, hooks = counts.get(row.id, (0, 0, 0))
            sent = found[(row.id, events.ACCEPTED)].n if (row.id, events.ACCEPTED) in found else 0
            bounced = (
                found[(row.id, events.BOUNCED)].uniq if (row.id, events.BOUNCED) in found else 0
            )
            item.update(
                APIKeyCount=keys,
                SMTPCount=smtps,
                WebhookCount=hooks,
                Sent7d=sent,
                BounceRate7d=round(bounced / sent * 100, 2) if sent else 0.0,
                LastActivityAt=iso_utc(last.get(row.id)),
            )
        domains.append(item)
    return {"Success": True, "Domains": domains}


@command("emailgateway.deletedomain", auth="user")
async def delete_domain(call: Call) -> dict[str, Any]:
    """Delete a sender domain (kept as status Deleted for its messages and events).

    Its SMTP credentials and API keys stop working at once on every node; mail already
    queued stays queued (see emailgateway.cleardomainqueue).

    Errors:
    1: Missing required parameter (DomainID)
    2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.write() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or access denied")
        usernames = await repo.soft_delete(conn, domain_id)
    bus = call.services.bus
    await bus.publish(Topics.DOMAIN, domain_id)
    await bus.publish(Topics.RELAY_DOMAINS, "*")
    for username in usernames:
        await bus.publish(Topics.CREDENTIAL, username)
    return ok()


@command("emailgateway.cleardomainqueue", auth="user")
async def clear_domain_queue(call: Call) -> dict[str, Any]:
    """Give up on every message of the domain still waiting for delivery.

    Each pending recipient (queued or deferred) of the domain's messages becomes ``failed``
    with one ``failed`` event, all in one transaction.

    Errors:
    1: Missing required parameter (DomainID)
    2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.write() as conn:
        row = await repo.get(conn, domain_id, user_id=call.user_id)
        if row is None:
            raise ApiError(2, "Domain not found or access denied")
        await queue_control.fail_domain_queue(
            conn,
            domain_id=domain_id,
            user_id=row.user_id,
            reason=CLEARED_REASON,
            data={"reason": "queue cleared"},
        )
    return ok()


@command("emailgateway.setdomainstatus", auth="admin")
async def set_domain_status(call: Call) -> dict[str, Any]:
    """Set a sender domain's status (admin): Enabled, Disabled or Approval Pending.

    A domain name is Enabled for one account at a time: enabling it while another account's
    domain of that name is Enabled is refused (4); set that one to Disabled or Approval Pending
    first.

    Parameters:
    DomainID (Integer, required): the sender domain.
    Status (String, required): Enabled, Disabled or Approval Pending.

    Errors:
    1: Missing required parameter (DomainID)
    2: Domain not found
    3: Invalid Status (Enabled, Disabled or Approval Pending)
    4: The domain name is Enabled for another account (not in the documents)
    """
    domain_id = domain_id_param(call, 1, 2)
    status = call.params.str("Status") or ""
    match = {s.lower(): s for s in STATUSES}.get(status.lower())
    if match is None:
        raise ApiError(3, "Invalid Status (Enabled, Disabled or Approval Pending)")
    try:
        async with call.services.db.write() as conn:
            current = await repo.get(conn, domain_id)
            if current is None:
                raise ApiError(2, "Domain not found")
            if match == "Enabled" and await repo.enabled_elsewhere(conn, current.name, domain_id):
                raise enabled_elsewhere_error(4)
            await repo.update_fields(conn, domain_id, status=match)
            row = await repo.get(conn, domain_id)
    except IntegrityError:
        raise enabled_elsewhere_error(4) from None
    assert row is not None
    await call.services.bus.publish(Topics.DOMAIN, domain_id)
    await call.services.bus.publish(Topics.RELAY_DOMAINS, "*")
    return ok(Domain=domain_body(row))
