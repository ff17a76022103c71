"""Suppression lists (CONTRACT.md: emailgateway.addsuppression, getsuppressions,
deletesuppression): one per account, and a global one (UserID 0, admin only).

A suppressed address gets no mail from the account (550 5.7.1 at RCPT; the send API refuses
with code 14), and none at all when it is on the global list. Users manage their own list; the
admin names the account with ``UserID`` (0 = the global list). Addresses are stored in lower
case. Changes reach every relay node at once (the ``suppression`` topic).
"""

from __future__ import annotations

from typing import Any

from relay.addresses import ascii_address, is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
from relay.store.db import fmt_dt
from relay.store.repos import suppressions as repo
from relay.store.repos import users as users_repo


async def target_user(call: Call) -> int:
    """The account whose list is meant: the caller's, or for the admin the UserID (0 = global)."""
    if not call.principal.is_admin:
        return call.user_id
    try:
        user_id = call.params.int("UserID")
    except ValueError:
        raise ApiError(4, "Invalid UserID") from None
    if user_id is None:
        raise ApiError(3, "Missing required parameter (UserID)")
    if user_id != 0:
        async with call.services.db.read() as conn:
            if await users_repo.get(conn, user_id) is None:
                raise ApiError(4, "Invalid UserID")
    return user_id


def email_param(call: Call) -> str:
    email = ascii_address(call.params.str("EmailAddress") or "").lower()
    if not email:
        raise ApiError(1, "Missing required parameter (EmailAddress)")
    if not is_valid_email(email):
        raise ApiError(2, "Invalid email address")
    return email


@command("emailgateway.addsuppression", auth="user_or_admin")
async def add_suppression(call: Call) -> dict[str, Any]:
    """Add an address to a suppression list (adding it again updates the reason).

    Parameters:
        EmailAddress (String, required): the address.
        Reason (String): why (kept, up to 255 characters).
        UserID (Integer): admin only, required for the admin: the account, 0 = global.

    Errors:
        1: Missing required parameter (EmailAddress)
        2: Invalid email address
        3: Missing required parameter (UserID)
        4: Invalid UserID
    """
    email = email_param(call)
    user_id = await target_user(call)
    reason = (call.params.str("Reason") or "")[:255]
    async with call.services.db.write() as conn:
        await repo.upsert(conn, user_id, email, reason)
    await call.services.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")
    return ok()


@command("emailgateway.deletesuppression", auth="user_or_admin")
async def delete_suppression(call: Call) -> dict[str, Any]:
    """Remove an address from a suppression list.

    Parameters:
        EmailAddress (String, required): the address.
        UserID (Integer): admin only, required for the admin: the account, 0 = global.

    Errors:
        1: Missing required parameter (EmailAddress)
        2: Invalid email address
        3: Missing required parameter (UserID)
        4: Invalid UserID
        5: Suppression entry not found
    """
    email = email_param(call)
    user_id = await target_user(call)
    async with call.services.db.write() as conn:
        removed = await repo.remove(conn, user_id, email)
    if not removed:
        raise ApiError(5, "Suppression entry not found")
    await call.services.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")
    return ok()


MAX_PAGE = 1000


@command("emailgateway.getsuppressions", auth="user_or_admin")
async def get_suppressions(call: Call) -> dict[str, Any]:
    """One page of a suppression list, newest first, with the number of matching entries.

    Parameters:
        StartFrom (Integer): offset of the first entry (default 0).
        RetrieveCount (Integer): entries per page (default 100, at most 1000).
        Query (String): only addresses containing this text.
        UserID (Integer): admin only, required for the admin: the account, 0 = global.

    Errors:
        3: Missing required parameter (UserID)
        4: Invalid UserID
        6: Invalid StartFrom or RetrieveCount (whole numbers, RetrieveCount 1 to 1000)
    """
    p = call.params
    try:
        start = p.int("StartFrom") or 0
        count = p.int("RetrieveCount")
    except ValueError:
        start, count = -1, None
    count = 100 if count is None else count
    if start < 0 or not 1 <= count <= MAX_PAGE:
        raise ApiError(
            6, "Invalid StartFrom or RetrieveCount (whole numbers, RetrieveCount 1 to 1000)"
        )
    user_id = await target_user(call)
    async with call.services.db.read() as conn:
        total, rows = await repo.search(conn, user_id, p.str("Query") or "", start, count)
    return ok(
        TotalRecords=total,
        Suppressions=[
            {
                "EmailAddress": r.email,
                "Reason": r.reason,
                "Source": r.source,
                "UserID": r.user_id,
                "CreatedAt": fmt_dt(r.created_at),
            }
            for r in rows
        ],
    )
