"""What several command modules share about the caller's gateway domain: reading its DomainID,
finding it among the caller's own (another user's domain is reported like a missing one),
showing its options, and the DNS checker that verifies it.

The commands themselves are in commands/domains.py (gateway domains), sender_domains.py,
webhooks.py, apikeys.py, smtp_credentials.py and stats.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.admin.dispatcher import Call
from relay.admin.errors import ApiError
from relay.admin.resources import DNS_CHECKER
from relay.dns.verify import DnsChecker
from relay.store.repos import domains as repo


async def owned_domain(
    conn: AsyncConnection, call: Call, domain_id: int, code: int | list[int], text: str, **kw: Any
) -> Row:
    """The caller's live domain, or the command's own "not found or access denied" error
    (another user's domain is reported exactly like a missing one)."""
    row = await repo.get(conn, domain_id, user_id=call.user_id)
    if row is None:
        raise ApiError(code, text, **kw)
    return row


def domain_id_param(call: Call, missing_code: int, not_found_code: int) -> int:
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(not_found_code, "Domain not found or access denied") from None
    if domain_id is None:
        raise ApiError(missing_code, "Missing required parameter (DomainID)")
    return domain_id


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


def checker(call: Call) -> DnsChecker:
    return call.request.app[DNS_CHECKER]
