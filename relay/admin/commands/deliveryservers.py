"""Delivery servers (004: deliveryserver.create, update, testresults, deliveryservers.get,
deliveryservers.delete) and their user-group assignments (CONTRACT.md: deliveryserver.assign,
deliveryserver.unassign).

Mail from a user goes to the servers assigned to the user's group for the ``Transactional``
channel. Every change here reaches the delivery workers of every node at once (the ``routes``
invalidation topic). SMTP passwords of delivery servers are stored encrypted when a
key-encryption key is configured (we need them back to authenticate) and are never returned:
``deliveryservers.get`` shows ``********`` where one is set. Validation failures are reported
all at once, as lists of codes and texts (004).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Row

from mta.powermta.inject import valid_vmta_name
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
    powermta: bool | None = None
    try:
        powermta = p.bool("PowerMTA")
    except ValueError:
        errors.append((18, "Invalid powermta value (must be: 1, 0)"))
    vmta = p.str("PowerMTAVirtualMTA") or ""
    if vmta and not valid_vmta_name(vmta):
        errors.append((19, "Invalid powermtavirtualmta value (letters, digits, '.', '-', '_')"))
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
        "powermta": bool(powermta),
        "powermta_vmta": vmta,
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
        "PowerMTA": bool(row.powermta),
        "PowerMTAVirtualMTA": row.powermta_vmta,
    }


@command("deliveryserver.create", auth="admin")
async def create(call: Call) -> dict[str, Any]:
    """Add an SMTP delivery server.

    Parameters:
        DeliveryServerName (String, required): display name.
        SendMethodSMTPHost (String, required): host name or IP address.
        SendMethodSMTPPort (Integer, required): port, e.g. 25, 587, 465.
        SendMethodSMTPSecure (String, required): "false", "ssl" (implicit TLS) or "tls" (STARTTLS).
        SendMethodSMTPTimeout (Integer, required): connection timeout in seconds.
        SendMethodSMTPAuth (Boolean, required): true or false.
        SendMethodSMTPUsername (String, conditional): required when SendMethodSMTPAuth is true.
        SendMethodSMTPPassword (String, conditional): required when SendMethodSMTPAuth is true.
        DomainSettings_LinkTracking (String, required): link tracking domain.
        DomainSettings_OpenTracking (String, required): open tracking domain.
        DomainSettings_MFrom (String, required): MAIL FROM (return-path) domain.
        DomainSettings_EnforcedFrom (String): enforced From address.
        SenderInfoAsMFrom (String): "Enabled" or "Disabled" (default).
        SenderInfoAsFrom (String): "Enabled" or "Disabled" (default).
        PowerMTA (Integer): 1 when the server is PowerMTA (default 0): mail handed to it
            carries ``X-Job: <MessageID>`` for its accounting records.
        PowerMTAVirtualMTA (String): VirtualMTA or pool name sent as ``X-Virtual-MTA``
            (PowerMTA servers only; letters, digits, ".", "-", "_").

    Errors:
        0: Success
        1: Missing deliveryservername
        2: Missing sendmethodsmtphost
        3: Missing sendmethodsmtpport
        4: Missing sendmethodsmtpsecure
        5: Missing sendmethodsmtptimeout
        6: Missing sendmethodsmtpauth
        7: Missing sendmethodsmtpusername
        8: Missing sendmethodsmtppassword
        9: Missing domainsettings_linktracking
        10: Missing domainsettings_opentracking
        11: Missing domainsettings_mfrom
        12: Missing domainsettings_enforcedfrom
        13: Invalid sendmethodsmtpsecure value (must be: false, ssl, tls)
        14: Invalid sendmethodsmtpauth value (must be: true, false)
        15: Invalid sendmethodsmtptimeout value (must be numeric)
        16: Invalid email address value for domainsettings_enforcedfrom
        18: Invalid powermta value (must be: 1, 0)
        19: Invalid powermtavirtualmta value (letters, digits, '.', '-', '_')
    """
    values = parse_server(call.params, password_required=True)
    # Without SMTP AUTH a password would be a secret stored for nothing.
    password = (call.params.str("SendMethodSMTPPassword") or "") if values["auth"] else ""
    values["password"] = call.services.box.seal(password) if password else ""
    async with call.services.db.write() as conn:
        server_id = await repo.create(conn, **values)
    return ok(ErrorText="", DeliveryServerID=server_id)


@command("deliveryservers.get", auth="admin")
async def get_all(call: Call) -> dict[str, Any]:
    """List every delivery server with its settings, test results and group assignments,
    keyed by DeliveryServerID. Passwords are never returned (``********`` when one is set).
    ``PowerMTA`` (true/false) and ``PowerMTAVirtualMTA`` say whether mail to the server
    carries PowerMTA's ``X-Job`` / ``X-Virtual-MTA`` headers.

    Errors:
        0: Success
        2: No delivery servers found
    """
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
    """Route a user group's mail through a delivery server for the given channels (added to
    any it already has).

    Parameters:
        DeliveryServerID (Integer, required): the server.
        UserGroupID (Integer, required): the group.
        Channels (String): comma list of Marketing, Transactional, AutoResponder
            (default Transactional).

    Errors:
        1: Missing required parameter (DeliveryServerID)
        2: Missing required parameter (UserGroupID)
        3: Delivery server not found
        4: User group not found
        5: Invalid channel (Marketing, Transactional or AutoResponder)
    """
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


def _update_values(p: Params, current: Row) -> dict[str, Any]:
    """The columns an update writes: 004's required fields always, the optional ones only
    when given (an omitted optional field keeps its value)."""
    values = parse_server(p, password_required=False)
    for param, column in (
        ("DomainSettings_EnforcedFrom", "enforced_from"),
        ("SenderInfoAsMFrom", "senderinfo_as_mfrom"),
        ("SenderInfoAsFrom", "senderinfo_as_from"),
        ("PowerMTA", "powermta"),
        ("PowerMTAVirtualMTA", "powermta_vmta"),
    ):
        if not p.has(param):
            del values[column]
    if p.has("SenderRotation"):
        enabled = (p.str("SenderRotation") or "").lower() == "enabled"
        values["sender_rotation"] = "Enabled" if enabled else "Disabled"
    if p.has("SenderRotationSettings"):
        raw = p.raw("SenderRotationSettings")
        values["sender_rotation_settings"] = (
            json.dumps(raw)
            if isinstance(raw, dict | list)
            else (p.str("SenderRotationSettings") or "")
        )
    if not values["auth"]:
        values["password"] = ""
    elif p.present("SendMethodSMTPPassword"):
        values["password"] = p.str("SendMethodSMTPPassword") or ""
    elif not current.password:
        raise ApiError([8], [_missing("SendMethodSMTPPassword")])
    return values


@command("deliveryserver.update", auth="admin")
async def update(call: Call) -> dict[str, Any]:
    """Replace a delivery server's settings. The required fields are those of create; an
    omitted password keeps the stored one, omitted optional fields keep their values.

    Parameters:
        DeliveryServerID (Integer, required): the server to update.
        DeliveryServerName (String, required): display name.
        SendMethodSMTPHost (String, required): host name or IP address.
        SendMethodSMTPPort (Integer, required): port.
        SendMethodSMTPSecure (String, required): "false", "ssl" or "tls".
        SendMethodSMTPTimeout (Integer, required): connection timeout in seconds.
        SendMethodSMTPAuth (Boolean, required): true or false.
        SendMethodSMTPUsername (String, conditional): required when SendMethodSMTPAuth is true.
        SendMethodSMTPPassword (String): new password; omitted keeps the stored one.
        DomainSettings_LinkTracking (String, required): link tracking domain.
        DomainSettings_OpenTracking (String, required): open tracking domain.
        DomainSettings_MFrom (String, required): MAIL FROM (return-path) domain.
        DomainSettings_EnforcedFrom (String): enforced From address.
        SenderRotationSettings (String): sender rotation configuration (stored as given).
        SenderInfoAsMFrom (String): "Enabled" or "Disabled".
        SenderInfoAsFrom (String): "Enabled" or "Disabled".
        SenderRotation (String): "Enabled" or "Disabled".
        PowerMTA (Integer): 1 when the server is PowerMTA, 0 when not; omitted keeps it.
        PowerMTAVirtualMTA (String): VirtualMTA or pool for ``X-Virtual-MTA``; omitted
            keeps it, empty removes it.

    Errors:
        0: Success
        1: Missing deliveryservername
        2: Missing sendmethodsmtphost
        3: Missing sendmethodsmtpport
        4: Missing sendmethodsmtpsecure
        5: Missing sendmethodsmtptimeout
        6: Missing sendmethodsmtpauth
        7: Missing sendmethodsmtpusername
        8: Missing sendmethodsmtppassword
        9: Missing domainsettings_linktracking
        10: Missing domainsettings_opentracking
        11: Missing domainsettings_mfrom
        12: Missing domainsettings_enforcedfrom
        13: Invalid sendmethodsmtpsecure value (must be: false, ssl, tls)
        14: Invalid sendmethodsmtpauth value (must be: true, false)
        15: Invalid sendmethodsmtptimeout value (must be numeric)
        16: Invalid email address value for domainsettings_enforcedfrom
        17: Delivery server not found
        18: Invalid powermta value (must be: 1, 0)
        19: Invalid powermtavirtualmta value (letters, digits, '.', '-', '_')
    """
    p = call.params
    try:
        server_id = p.int("DeliveryServerID")
    except ValueError:
        server_id = None
    async with call.services.db.write() as conn:
        current = await repo.get(conn, server_id) if server_id is not None else None
        if current is None:
            raise ApiError([17], ["Delivery server not found"])
        assert server_id is not None
        values = _update_values(p, current)
        if values.get("password"):
            values["password"] = call.services.box.seal(values["password"])
        await repo.update_fields(conn, server_id, **values)
    await call.services.bus.publish(Topics.ROUTES, "*")
    return ok(ErrorText="", DeliveryServerID=server_id)


TEST_RESULT_KEYS = (
    ("SPF", "spf"),
    ("DKIM", "dkim"),
    ("DMARC", "dmarc"),
    ("SenderDomain", "sender_domain"),
    ("LinkDomain", "link_domain"),
    ("OpenDomain", "open_domain"),
    ("EmailDelivery", "email_delivery"),
)


def _test_results(p: Params) -> dict[str, bool] | None:
    """TestResults as an object, a JSON string, or PHP's TestResults[SPF]=1 form fields."""
    raw = p.raw("TestResults")
    if isinstance(raw, str) and raw.strip().startswith("{"):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    if not isinstance(raw, dict) or not raw:
        return None
    given = Params(raw)
    out: dict[str, bool] = {}
    for name, key in TEST_RESULT_KEYS:
        out[key] = given.truthy(name)
    return out


@command("deliveryserver.testresults", auth="admin")
async def test_results(call: Call) -> dict[str, Any]:
    """Save the results of a delivery server's verification tests (shown by
    deliveryservers.get as VerificationResults and VerificationLastCheckedAt).

    Parameters:
        DeliveryServerID (Integer, required): the server.
        TestResults (Object, required): booleans SPF, DKIM, DMARC, SenderDomain, LinkDomain,
            OpenDomain, EmailDelivery (a missing one counts as false).
        LastCheckedAt (String, required): "YYYY-MM-DD HH:MM:SS" (UTC).

    Errors:
        0: Success
        1: Missing deliveryserverid
        2: Missing test_results
        3: Invalid deliveryserverid
        4: Missing last_checked_at
    """
    p = call.params
    errors: list[tuple[int, str]] = []
    server_id: int | None = None
    if not p.present("DeliveryServerID"):
        errors.append((1, "Missing deliveryserverid"))
    else:
        try:
            server_id = p.int("DeliveryServerID")
        except ValueError:
            errors.append((3, "Invalid deliveryserverid"))
    results = _test_results(p)
    if results is None:
        errors.append((2, "Missing test_results"))
    checked_at: dt.datetime | None = None
    try:
        checked_at = dt.datetime.strptime(p.str("LastCheckedAt") or "", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        errors.append((4, "Missing last_checked_at"))
    async with call.services.db.write() as conn:
        if server_id is not None and await repo.get(conn, server_id) is None:
            errors.append((3, "Invalid deliveryserverid"))
        if errors:
            errors.sort()
            raise ApiError([c for c, _ in errors], [m for _, m in errors])
        assert server_id is not None
        await repo.update_fields(
            conn,
            server_id,
            verification_results=results,
            verification_last_checked_at=checked_at,
        )
    return ok(ErrorText="")


@command("deliveryservers.delete", auth="admin")
async def delete_servers(call: Call) -> dict[str, Any]:
    """Delete delivery servers and their group assignments. IDs that do not exist are
    skipped; groups left without a server keep their mail queued (deferred).

    Parameters:
        DeliveryServerID (String, required): comma-separated IDs, e.g. "123,456".

    Errors:
        0: Success
        1: Missing deliveryserverid
    """
    ids = call.params.int_list("DeliveryServerID")
    if not ids:
        raise ApiError([1], ["Missing deliveryserverid"])
    async with call.services.db.write() as conn:
        await repo.delete_many(conn, ids)
    await call.services.bus.publish(Topics.ROUTES, "*")
    return ok()


@command("deliveryserver.unassign", auth="admin")
async def unassign(call: Call) -> dict[str, Any]:
    """Stop routing a user group's mail through a delivery server: every channel, or only
    those given. Removing an assignment that does not exist is not an error.

    Parameters:
        DeliveryServerID (Integer, required): the server.
        UserGroupID (Integer, required): the group.
        Channels (String): comma list of channels to remove (default: all).

    Errors:
        1: Missing required parameter (DeliveryServerID)
        2: Missing required parameter (UserGroupID)
        3: Delivery server not found
        4: User group not found
        5: Invalid channel (Marketing, Transactional or AutoResponder)
    """
    server_id, group_id = ids_param(call)
    channels = (
        parse_channels(call.params.str("Channels")) if call.params.present("Channels") else None
    )
    async with call.services.db.write() as conn:
        if await repo.get(conn, server_id) is None:
            raise ApiError(3, "Delivery server not found")
        if not await users_repo.group_exists(conn, group_id):
            raise ApiError(4, "User group not found")
        await repo.unassign(conn, server_id, group_id, channels)
    await call.services.bus.publish(Topics.ROUTES, group_id)
    return ok()
