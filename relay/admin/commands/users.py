"""Users (CONTRACT.md: commands beyond the documents)."""

from __future__ import annotations

from typing import Any

from relay.addresses import is_valid_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
from relay.secrets import hash_password, hash_secret, new_user_api_key
from relay.store.repos import users as repo

STATUSES = ("Enabled", "Disabled")


def flag(call: Call, name: str, default: bool, code: int) -> bool:
    try:
        value = call.params.bool(name)
    except ValueError:
        raise ApiError(code, f"Invalid {name} value (1 or 0)") from None
    return default if value is None else value


@command("user.create", auth="admin")
async def user_create(call: Call) -> dict[str, Any]:
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
            password_hash=hash_password(password) if password else None,
            group_id=group_id,
            status=status,
            trusted=trusted,
            verified=verified,
            api_key_hash=hash_secret(api_key),
        )
    await call.services.bus.publish(Topics.USER, user_id)
    return ok(UserID=user_id, APIKey=api_key)
