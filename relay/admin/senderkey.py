"""The account behind a sender-domain API key, for the public v1 routes.

The dispatcher only proves the key is Enabled; whether its user and domain may still act is
decided here, because each route gives those failures its own code and text.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.admin.dispatcher import Call
from relay.admin.errors import ApiError
from relay.directory import DomainView, UserView


@dataclass(frozen=True, slots=True)
class SenderScope:
    user: UserView
    domain: DomainView
    api_key_id: int


async def sender_scope(call: Call, error: ApiError, *, enabled_only: bool = True) -> SenderScope:
    """The key's user and domain if both still exist, else raise ``error``. With
    ``enabled_only`` a Disabled account counts as gone too (the send route tells that apart
    with its own codes)."""
    principal = call.principal
    assert principal.domain_id is not None and principal.api_key_id is not None
    directory = call.services.directory
    user = await directory.user(call.user_id)
    domain = await directory.domain(principal.domain_id)
    if (
        user is None
        or user.status == "Deleted"
        or (enabled_only and user.status != "Enabled")
        or domain is None
        or domain.status == "Deleted"
        or domain.user_id != user.id
    ):
        raise error
    return SenderScope(user, domain, principal.api_key_id)
