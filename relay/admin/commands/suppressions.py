"""Suppression lists (CONTRACT.md): per account, and global (UserID 0, admin only)."""

from __future__ import annotations

from typing import Any

from relay.addresses import is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
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
    email = (call.params.str("EmailAddress") or "").lower()
    if not email:
        raise ApiError(1, "Missing required parameter (EmailAddress)")
    if not is_valid_email(email):
        raise ApiError(2, "Invalid email address")
    return email


@command("emailgateway.addsuppression", auth="user_or_admin")
async def add_suppression(call: Call) -> dict[str, Any]:
    email = email_param(call)
    user_id = await target_user(call)
    reason = (call.params.str("Reason") or "")[:255]
    async with call.services.db.write() as conn:
        await repo.upsert(conn, user_id, email, reason)
    await call.services.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")
    return ok()


@command("emailgateway.deletesuppression", auth="user_or_admin")
async def delete_suppression(call: Call) -> dict[str, Any]:
    email = email_param(call)
    user_id = await target_user(call)
    async with call.services.db.write() as conn:
        removed = await repo.remove(conn, user_id, email)
    if not removed:
        raise ApiError(5, "Suppression entry not found")
    await call.services.bus.publish(Topics.SUPPRESSION, f"{user_id}:{email}")
    return ok()
