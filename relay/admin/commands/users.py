"""Users and sessions (CONTRACT.md: user.create, user.update, user.get, users.get, user.delete,
user.login).

A user owns sender domains and authenticates the user commands with their ``APIKey`` (returned
once by user.create, stored hashed) or a ``SessionID`` from user.login (stored hashed, expires
after ``admin.session_ttl`` seconds). Passwords are hashed with scrypt. A user's send limit and
domain limit are their own when set, the group's otherwise (``Effective...`` in the response);
0 means unlimited. Changes reach the SMTP side of every node at once (the ``user`` topic).
Deleting a user also deletes their sender domains, SMTP credentials, API keys, webhooks and
sessions (rows are kept, marked Deleted, so events keep their references).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import Row

from relay import metrics
from relay.addresses import is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.authlimit import FailureThrottle
from relay.directory import Topics
from relay.secrets import (
    hash_password,
    hash_secret,
    new_session_id,
    new_user_api_key,
    verify_password,
)
from relay.services import Services
from relay.store.db import fmt_dt
from relay.store.repos import sessions as sessions_repo
from relay.store.repos import users as repo

STATUSES = ("Enabled", "Disabled")


def flag(call: Call, name: str, default: bool, code: int) -> bool:
    try:
        value = call.params.bool(name)
    except ValueError:
        raise ApiError(code, f"Invalid {name} value (1 or 0)") from None
    return default if value is None else value


def user_body(row: Row) -> dict[str, Any]:
    def effective(own: int | None, group: int) -> int:
        return own if own is not None else group

    return {
        "UserID": row.id,
        "EmailAddress": row.email,
        "Name": row.name,
        "UserGroupID": row.group_id,
        "UserGroupName": row.group_name,
        "Status": row.status,
        "Trusted": bool(row.trusted),
        "Verified": bool(row.verified),
        "SendLimitPerHour": row.send_limit_per_hour,
        "MaxSenderDomains": row.max_sender_domains,
        "EffectiveSendLimitPerHour": effective(
            row.send_limit_per_hour, row.group_send_limit_per_hour
        ),
        "EffectiveMaxSenderDomains": effective(
            row.max_sender_domains, row.group_max_sender_domains
        ),
        "CreatedAt": fmt_dt(row.created_at),
        "UpdatedAt": fmt_dt(row.updated_at),
    }


def user_id_param(call: Call) -> int:
    try:
        user_id = call.params.int("UserID")
    except ValueError:
        raise ApiError(2, "User not found") from None
    if user_id is None:
        raise ApiError(1, "Missing required parameter (UserID)")
    return user_id


@command("user.create", auth="admin")
async def user_create(call: Call) -> dict[str, Any]:
    """Create a user; their ``APIKey`` is in this response only.

    Parameters:
        EmailAddress (String, required): login and contact address; unique.
        Name (String): display name.
        Password (String): for user.login; without one the user can only use the APIKey.
        UserGroupID (Integer): default 1 ("Default User Group").
        Status (String): Enabled (default) or Disabled.
        Trusted (Integer): 1 (default) or 0; untrusted users cannot send.
        Verified (Integer): 1 (default) or 0; unverified users cannot send.

    Errors:
        1: Missing required parameter (EmailAddress)
        2: Invalid email address
        3: Email address already exists
        4: Invalid UserGroupID
        5: Invalid Status (Enabled or Disabled)
        6: Invalid Trusted or Verified value (1 or 0)
    """
    p = call.params
    email = (p.str("EmailAddress") or "").lower()
    if not email:
        raise ApiError(1, "Missing required parameter (EmailAddress)")
    if not is_valid_email(email):
        raise ApiError(2, "Invalid email address")
    try:
        group_id = p.int("UserGroupID") or 1
    except ValueError:
        raise ApiError(4, "Invalid UserGroupID") from None
    status = p.str("Status") or "Enabled"
    if status not in STATUSES:
        raise ApiError(5, "Invalid Status (Enabled or Disabled)")
    trusted = flag(call, "Trusted", True, 6)
    verified = flag(call, "Verified", True, 6)
    password = p.str("Password")
    # scrypt costs tens of milliseconds of CPU: off the event loop.
    password_hash = await asyncio.to_thread(hash_password, password) if password else None
    api_key = new_user_api_key()
    async with call.services.db.write() as conn:
        if not await repo.group_exists(conn, group_id):
            raise ApiError(4, "Invalid UserGroupID")
        if await repo.email_taken(conn, email):
            raise ApiError(3, "Email address already exists")
        user_id = await repo.create(
            conn,
            email=email,
            name=p.str("Name") or "",
            password_hash=password_hash,
            group_id=group_id,
            status=status,
            trusted=trusted,
            verified=verified,
            api_key_hash=hash_secret(api_key),
        )
    await call.services.bus.publish(Topics.USER, user_id)
    return ok(UserID=user_id, APIKey=api_key)


def _limit(call: Call, name: str) -> tuple[bool, int | None]:
    """(given, value) for SendLimitPerHour / MaxSenderDomains; an empty value means inherit."""
    p = call.params
    if not p.has(name):
        return False, None
    try:
        value = p.int(name)
    except ValueError:
        raise ApiError(8, f"Invalid {name} (a whole number, 0 = unlimited)") from None
    if value is not None and value < 0:
        raise ApiError(8, f"Invalid {name} (a whole number, 0 = unlimited)")
    return True, value


@command("user.update", auth="admin")
async def user_update(call: Call) -> dict[str, Any]:
    """Change any of a user's fields; the fields not given keep their values. A user's limits
    override their group's; an empty SendLimitPerHour or MaxSenderDomains returns to the
    group's value.

    Parameters:
        UserID (Integer, required): the user.
        EmailAddress (String): new address; unique.
        Name (String): display name.
        Password (String): new password.
        UserGroupID (Integer): move the user to this group.
        Status (String): Enabled or Disabled.
        Trusted (Integer): 1 or 0.
        Verified (Integer): 1 or 0.
        SendLimitPerHour (Integer): recipients per hour, 0 = unlimited, empty = the group's.
        MaxSenderDomains (Integer): sender domains, 0 = unlimited, empty = the group's.

    Errors:
        1: Missing required parameter (UserID)
        2: Invalid email address
        3: Email address already exists
        4: Invalid UserGroupID
        5: Invalid Status (Enabled or Disabled)
        6: Invalid Trusted or Verified value (1 or 0)
        7: User not found
        8: Invalid SendLimitPerHour or MaxSenderDomains (a whole number, 0 = unlimited)
    """
    p = call.params
    try:
        user_id = p.int("UserID")
    except ValueError:
        raise ApiError(7, "User not found") from None
    if user_id is None:
        raise ApiError(1, "Missing required parameter (UserID)")
    values: dict[str, Any] = {}
    if p.present("EmailAddress"):
        email = (p.str("EmailAddress") or "").lower()
        if not is_valid_email(email):
            raise ApiError(2, "Invalid email address")
        values["email"] = email
    if p.has("Name"):
        values["name"] = p.str("Name") or ""
    group_id: int | None = None
    if p.present("UserGroupID"):
        try:
            group_id = p.int("UserGroupID")
        except ValueError:
            raise ApiError(4, "Invalid UserGroupID") from None
        values["group_id"] = group_id
    if p.present("Status"):
        status = p.str("Status") or ""
        if status not in STATUSES:
            raise ApiError(5, "Invalid Status (Enabled or Disabled)")
        values["status"] = status
    for name, column in (("Trusted", "trusted"), ("Verified", "verified")):
        if p.present(name):
            values[column] = flag(call, name, True, 6)
    for name, column in (
        ("SendLimitPerHour", "send_limit_per_hour"),
        ("MaxSenderDomains", "max_sender_domains"),
    ):
        given, value = _limit(call, name)
        if given:
            values[column] = value
    if p.present("Password"):
        values["password_hash"] = await asyncio.to_thread(hash_password, p.str("Password") or "")
    async with call.services.db.write() as conn:
        if await repo.get(conn, user_id) is None:
            raise ApiError(7, "User not found")
        if group_id is not None and not await repo.group_exists(conn, group_id):
            raise ApiError(4, "Invalid UserGroupID")
        if "email" in values and await repo.email_taken(conn, values["email"], user_id):
            raise ApiError(3, "Email address already exists")
        if values:
            await repo.update_fields(conn, user_id, **values)
        row = await repo.get_with_group(conn, user_id)
    assert row is not None
    await call.services.bus.publish(Topics.USER, user_id)
    return ok(User=user_body(row))


@command("user.get", auth="admin")
async def user_get(call: Call) -> dict[str, Any]:
    """One user (never their password or API key).

    Parameters:
        UserID (Integer, required): the user.

    Errors:
        1: Missing required parameter (UserID)
        2: User not found
    """
    user_id = user_id_param(call)
    async with call.services.db.read() as conn:
        row = await repo.get_with_group(conn, user_id)
    if row is None:
        raise ApiError(2, "User not found")
    return ok(User=user_body(row))


@command("users.get", auth="admin")
async def users_get(call: Call) -> dict[str, Any]:
    """Every user that is not deleted, in UserID order; optionally one group's.

    Parameters:
        UserGroupID (Integer): only the users of this group.

    Errors:
        4: Invalid UserGroupID
    """
    try:
        group_id = call.params.int("UserGroupID")
    except ValueError:
        raise ApiError(4, "Invalid UserGroupID") from None
    async with call.services.db.read() as conn:
        rows = await repo.list_with_group(conn, group_id)
    users = [user_body(r) for r in rows]
    return ok(TotalUsers=len(users), Users=users)


@command("user.delete", auth="admin")
async def user_delete(call: Call) -> dict[str, Any]:
    """Delete a user, their sender domains, SMTP credentials, API keys, webhooks and sessions.
    Their credentials stop working on every node at once; queued mail is still delivered.

    Parameters:
        UserID (Integer, required): the user.

    Errors:
        1: Missing required parameter (UserID)
        2: User not found
    """
    user_id = user_id_param(call)
    async with call.services.db.write() as conn:
        if await repo.get(conn, user_id) is None:
            raise ApiError(2, "User not found")
        domain_ids, usernames = await repo.soft_delete(conn, user_id)
    bus = call.services.bus
    await bus.publish(Topics.USER, user_id)
    for domain_id in domain_ids:
        await bus.publish(Topics.DOMAIN, domain_id)
    for username in usernames:
        await bus.publish(Topics.CREDENTIAL, username)
    if domain_ids:
        await bus.publish(Topics.RELAY_DOMAINS, "*")
    return ok()


# A password hash to check against when the address is unknown, so both answers take as long.
_DUMMY_HASH: list[str] = []


def _login_throttle(services: Services) -> FailureThrottle:
    admin = services.settings.admin
    return FailureThrottle(
        services.limiter,
        "login",
        admin.login_failure_window,
        admin.login_max_failures_per_ip,
        admin.login_max_failures,
    )


@command("user.login", auth="none")
async def user_login(call: Call) -> dict[str, Any]:
    """Exchange a user's email address and password for a SessionID (the user commands'
    ``SessionID`` parameter), valid for ``admin.session_ttl`` seconds. Failed logins are
    counted per email address and per client address within ``admin.login_failure_window``
    seconds: after ``admin.login_max_failures`` for an address, logins for it are refused
    until the window passes, except from a client address that has logged in as that user
    before; after ``admin.login_max_failures_per_ip`` from one client address, logins from it
    are refused the same way. The password is not checked while refused. A Disabled user
    cannot log in (3, as for a wrong password), and the APIKey and sessions of a Disabled user
    are refused like wrong ones (99998) until the user is Enabled again.

    Parameters:
        EmailAddress (String, required): the user's address.
        Password (String, required): the user's password.

    Errors:
        1: Missing required parameter (EmailAddress)
        2: Missing required parameter (Password)
        3: Invalid email address or password
        4: Too many failed login attempts; try again later
    """
    p = call.params
    email = (p.str("EmailAddress") or "").lower()
    if not email:
        raise ApiError(1, "Missing required parameter (EmailAddress)")
    password = p.str("Password") or ""
    if not password:
        raise ApiError(2, "Missing required parameter (Password)")
    services = call.services
    admin = services.settings.admin
    throttle = _login_throttle(services)
    client = call.request.remote or ""
    held_back = await throttle.check(email, client)
    if held_back is not None:
        metrics.AUTH_THROTTLED.labels("api", held_back).inc()
        raise ApiError(4, "Too many failed login attempts; try again later")
    try:
        async with services.db.read() as conn:
            user = await repo.find_by_email(conn, email)
        stored = user.password_hash if user is not None else None
        if stored is None:
            if not _DUMMY_HASH:
                _DUMMY_HASH.append(await asyncio.to_thread(hash_password, new_session_id()))
            stored = _DUMMY_HASH[0]
        valid = await asyncio.to_thread(verify_password, password, stored)
    except Exception:
        await throttle.undecided(email, client)  # not a failed login: storage trouble
        raise
    if user is None or not valid or not user.password_hash:
        await throttle.failed(email, client)
        raise ApiError(3, "Invalid email address or password")
    if user.status != "Enabled":
        # Its session would be refused anyway; answered like a wrong password (no leak).
        await throttle.failed(email, client)
        raise ApiError(3, "Invalid email address or password")
    await throttle.succeeded(email, client)
    session_id = new_session_id()
    now = time.time()
    expires = now + admin.session_ttl
    async with services.db.write() as conn:
        await sessions_repo.purge_expired(conn, user.id, now)
        await sessions_repo.create(
            conn, id_hash=hash_secret(session_id), user_id=user.id, expires_at=expires
        )
    return ok(
        SessionID=session_id,
        UserID=user.id,
        ExpiresAt=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(expires)),
    )
