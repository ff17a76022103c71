"""User groups (CONTRACT.md: usergroup.create, usergroup.update, usergroups.get).

A group gives its users their default limits (0 = unlimited) and their delivery route (see
deliveryserver.assign). Group 1, "Default User Group", always exists. Changing a group's limits
changes every member's effective limits, so every member's cached account is invalidated on
every node.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.directory import Topics
from relay.store.db import fmt_dt
from relay.store.repos import users as repo

LIMITS = (("MaxSenderDomains", "max_sender_domains"), ("SendLimitPerHour", "send_limit_per_hour"))
MAX_NAME = 255


def group_body(row: Row, user_count: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "UserGroupID": row.id,
        "Name": row.name,
        "MaxSenderDomains": row.max_sender_domains,
        "SendLimitPerHour": row.send_limit_per_hour,
        "CreatedAt": fmt_dt(row.created_at),
        "UpdatedAt": fmt_dt(row.updated_at),
    }
    if user_count is not None:
        body["UserCount"] = user_count
    return body


def _limits(call: Call) -> dict[str, int]:
    values: dict[str, int] = {}
    for name, column in LIMITS:
        try:
            value = call.params.int(name)
        except ValueError:
            value = -1
        if value is None:
            continue
        if value < 0:
            raise ApiError(2, f"Invalid {name} (a whole number, 0 = unlimited)")
        values[column] = value
    return values


@command("usergroup.create", auth="admin")
async def create(call: Call) -> dict[str, Any]:
    """Create a user group.

    Parameters:
        Name (String, required): the group's name.
        MaxSenderDomains (Integer): sender domains per user, 0 = unlimited (default).
        SendLimitPerHour (Integer): recipients per user per hour, 0 = unlimited (default).

    Errors:
        1: Missing required parameter (Name)
        2: Invalid MaxSenderDomains or SendLimitPerHour (a whole number, 0 = unlimited)
    """
    name = (call.params.str("Name") or "")[:MAX_NAME]
    if not name:
        raise ApiError(1, "Missing required parameter (Name)")
    values = _limits(call)
    async with call.services.db.write() as conn:
        group_id = await repo.create_group(conn, name=name, **values)
    return ok(UserGroupID=group_id)


@command("usergroup.update", auth="admin")
async def update(call: Call) -> dict[str, Any]:
    """Rename a user group or change its limits; fields not given keep their values. Every
    member whose limits come from the group sees the new ones at once.

    Parameters:
        UserGroupID (Integer, required): the group.
        Name (String): new name.
        MaxSenderDomains (Integer): 0 = unlimited.
        SendLimitPerHour (Integer): 0 = unlimited.

    Errors:
        1: Missing required parameter (UserGroupID)
        2: Invalid MaxSenderDomains or SendLimitPerHour (a whole number, 0 = unlimited)
        3: User group not found
    """
    try:
        group_id = call.params.int("UserGroupID")
    except ValueError:
        raise ApiError(3, "User group not found") from None
    if group_id is None:
        raise ApiError(1, "Missing required parameter (UserGroupID)")
    values: dict[str, Any] = _limits(call)
    if call.params.present("Name"):
        values["name"] = (call.params.str("Name") or "")[:MAX_NAME]
    async with call.services.db.write() as conn:
        if await repo.get_group(conn, group_id) is None:
            raise ApiError(3, "User group not found")
        if values:
            await repo.update_group(conn, group_id, **values)
        row = await repo.get_group(conn, group_id)
        members = await repo.ids_in_group(conn, group_id)
    assert row is not None
    for user_id in members:
        await call.services.bus.publish(Topics.USER, user_id)
    return ok(UserGroup=group_body(row, len(members)))


@command("usergroups.get", auth="admin")
async def get_all(call: Call) -> dict[str, Any]:
    """Every user group with its limits and number of users, in UserGroupID order.

    Errors:
        0: Success
    """
    async with call.services.db.read() as conn:
        rows = await repo.list_groups(conn)
    return ok(UserGroups=[group_body(r, r.user_count) for r in rows])
