"""Delivery servers (seed 004) and their user-group assignments (CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from relay.addresses import is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.params import Params
from relay.directory import Topics
from relay.store.db import fmt_dt
from relay.store.repos import delivery_servers as repo
from relay.store.repos import users as users_repo

SECURE = ("false", "ssl", "tls")
CHANNELS = ("Marketing", "Transactional", "AutoResponder")

# (code, parameter) for the required fields of create/update, in the document's order.
REQUIRED = (
    (1, "DeliveryServerName"),
    (2, "SendMethodSMTPHost"),
    (3, "SendMethodSMTPPort"),
    (4, "SendMethodSMTPSecure"),
    (5, "SendMethodSMTPTimeout"),
    (6, "SendMethodSMTPAuth"),
)
DOMAIN_FIELDS = (
    (9, "DomainSettings_LinkTracking", "link_tracking_domain"),
    (10, "DomainSettings_OpenTracking", "open_tracking_domain"),
    (11, "DomainSettings_MFrom", "mfrom_domain"),
)


def _missing(name: str) -> str:
    return f"Missing {name.lower()}"


def parse_server(p: Params, *, password_required: bool) -> dict[str, Any]:
    """Validate create/update fields; every failing check is reported (the documents list them)."""
    errors: list[tuple[int, str]] = []
    for code, name in REQUIRED:
        if not p.present(name):
            errors.append((code, _missing(name)))
    port: int | None = None
    if p.present("SendMethodSMTPPort"):
        try:
            port = p.int("SendMethodSMTPPort")
        except ValueError:
            port = None
        if port is None or not 0 < port < 65536:
            errors.append((3, _missing("SendMethodSMTPPort")))
    secure = (p.str("SendMethodSMTPSecure") or "").lower()
    if p.present("SendMethodSMTPSecure") and secure not in SECURE:
        errors.append((13, "Invalid sendmethodsmtpsecure value (must be: false, ssl, tls)"))
    auth: bool | None = None
    if p.present("SendMethodSMTPAuth"):
        try:
            auth = p.bool("SendMethodSMTPAuth")
        except ValueError:
            errors.append((14, "Invalid sendmethodsmtpauth value (must be: true, false)"))
    timeout: int | None = None
    if p.present("SendMethodSMTPTimeout"):
        try:
            timeout = p.int("SendMethodSMTPTimeout")
        except ValueError:
            errors.append((15, "Invalid sendmethodsmtptimeout value (must be numeric)"))
    if auth:
        if not p.present("SendMethodSMTPUsername"):
            errors.append((7, _missing("SendMethodSMTPUsername")))
        if password_required and not p.present("SendMethodSMTPPassword"):
            errors.append((8, _missing("SendMethodSMTPPassword")))
    for code, name, _ in DOMAIN_FIELDS:
        if not p.present(name):
            errors.append((code, _missing(name)))
    enforced = p.str("DomainSettings_EnforcedFrom") or ""
    if enforced and not is_valid_email(enforced):
        errors.append((16, "Invalid email address value for domainsettings_enforcedfrom"))
    if errors:
        errors.sort()
        raise ApiError([c for c, _ in errors], [m for _, m in errors])
    values: dict[str, Any] = {
        "name": p.str("DeliveryServerName"),
        "host": p.str("SendMethodSMTPHost"),
        "port": port,
        "secure": secure,
        "timeout": timeout,
        "auth": bool(auth),
        "username": (p.str("SendMethodSMTPUsername") or "") if auth else "",
        "enforced_from": enforced,
        "senderinfo_as_mfrom": (p.str("SenderInfoAsMFrom") or "").lower() == "enabled",
        "senderinfo_as_from": (p.str("SenderInfoAsFrom") or "").lower() == "enabled",
    }
    for _, name, column in DOMAIN_FIELDS:
        values[column] = p.str(name)
    return values


def server_body(row: Row, assignments: list[Row]) -> dict[str, Any]:
    groups: dict[int, dict[str, Any]] = {}
    for a in assignments:
        entry = groups.setdefault(
            a.group_id, {"UserGroupID": str(a.group_id), "GroupName": a.group_name, "Channels": []}
        )
        entry["Channels"].append(a.channel)
    results = row.verification_results or {}
    return {
        "DeliveryServerID": str(row.id),
        "Name": row.name,
        "ConnectionParams": {
            "smtp_host": row.host,
            "smtp_port": row.port,
            "smtp_secure": row.secure,
            "smtp_timeout": row.timeout,
            "smtp_auth": bool(row.auth),
            "smtp_username": row.username,
            # Stored sealed; never returned in clear.
            "smtp_password": "********" if row.password else "",
        },
        "Domains": {
            "link_tracking": row.link_tracking_domain,
            "open_tracking": row.open_tracking_domain,
            "mfrom_domain": row.mfrom_domain,
            "enforced_from": row.enforced_from,
            "senderinfo_as_mfrom": bool(row.senderinfo_as_mfrom),
            "senderinfo_as_from": bool(row.senderinfo_as_from),
        },
        "VerificationResults": {
            key: bool(results.get(key, False))
            for key in (
                "email_delivery",
                "spf",
                "dkim",
                "dmarc",
                "sender_domain",
                "link_domain",
                "open_domain",
            )
        },
        "VerificationLastCheckedAt": fmt_dt(row.verification_last_checked_at),
        "UserGroupAssignments": list(groups.values()),
        "IsAllocated": bool(groups),
    }


@command("deliveryserver.create", auth="admin")
async def create(call: Call) -> dict[str, Any]:
    values = parse_server(call.params, password_required=True)
    password = call.params.str("SendMethodSMTPPassword") or ""
    values["password"] = call.services.box.seal(password) if password else ""
    async with call.services.db.write() as conn:
        server_id = await repo.create(conn, **values)
    return ok(ErrorText="", DeliveryServerID=server_id)


@command("deliveryservers.get", auth="admin")
async def get_all(call: Call) -> dict[str, Any]:
    async with call.services.db.read() as conn:
        rows = await repo.list_all(conn)
        assignments = await repo.assignments(conn)
    if not rows:
        raise ApiError(2, "No delivery servers found")
    by_server: dict[int, list[Row]] = {}
    for a in assignments:
        by_server.setdefault(a.server_id, []).append(a)
    return ok(DeliveryServers={str(r.id): server_body(r, by_server.get(r.id, [])) for r in rows})


def parse_channels(value: str | None) -> list[str]:
    names = [c.strip() for c in (value or "Transactional").split(",") if c.strip()]
    canonical = {c.lower(): c for c in CHANNELS}
    out = []
    for name in names:
        if name.lower() not in canonical:
            raise ApiError(5, "Invalid channel (Marketing, Transactional or AutoResponder)")
        out.append(canonical[name.lower()])
    return out or ["Transactional"]


def ids_param(call: Call) -> tuple[int, int]:
    p = call.params
    if not p.present("DeliveryServerID"):
        raise ApiError(1, "Missing required parameter (DeliveryServerID)")
    if not p.present("UserGroupID"):
        raise ApiError(2, "Missing required parameter (UserGroupID)")
    try:
        server_id, group_id = p.int("DeliveryServerID"), p.int("UserGroupID")
    except ValueError:
        raise ApiError(3, "Delivery server not found") from None
    assert server_id is not None and group_id is not None
    return server_id, group_id


@command("deliveryserver.assign", auth="admin")
async def assign(call: Call) -> dict[str, Any]:
    server_id, group_id = ids_param(call)
    channels = parse_channels(call.params.str("Channels"))
    async with call.services.db.write() as conn:
        if await repo.get(conn, server_id) is None:
            raise ApiError(3, "Delivery server not found")
        if not await users_repo.group_exists(conn, group_id):
            raise ApiError(4, "User group not found")
        await repo.assign(conn, server_id, group_id, channels)
    await call.services.bus.publish(Topics.ROUTES, group_id)
    return ok()
