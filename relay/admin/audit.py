"""The admin API's audit trail: one log line ("admin change") per call that changes something,
saying which command, who made it (the admin key, a user by API key or session, a sender
key), from which address, on which objects, and how it ended (``error_code`` 0 = done).

Reads (get*, list*, export*, aggr*, *stats, DNS records, domain lists) are not logged. Neither
are the send commands, whose messages have their own line ("accepted", relay/submit.py), nor
the queue commands, which log one line per message they change (relay/queue/control.py). No
parameter value is logged but the ids and names below: never a password, key or message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from relay.admin.auth import Principal
from relay.admin.params import Params

log = structlog.get_logger("relay.admin.audit")

READ_VERBS = ("get", "list", "export", "aggr")
READS = frozenset({"sender.domains", "inbound-relay-domain-check", "user.senderdomain.dns"})
SENDS = frozenset({"emailgateway.sendemail.public", "emailgateway.smtprelay"})
# Logged by the command itself (per message); a login changes no configuration.
OWN_LINES = frozenset({"user.login"})
OWN_PREFIXES = ("queue.",)
# Parameters that name what a change is about (ids and names only), under their log keys.
NAMED = {
    "UserID": "user_id",
    "DomainID": "domain_id",
    "DomainName": "domain",
    "EmailAddress": "email",
    "DeliveryServerID": "server_id",
    "UserGroupID": "group_id",
    "WebhookID": "webhook_id",
    "MessageID": "queue_id",
    "Status": "status",
}
MAX_VALUE = 200


def changes(command: str) -> bool:
    """Whether a call of ``command`` is logged as a change."""
    name = command.lower()
    verb = name.removesuffix(".public").rsplit(".", 1)[-1]
    if name in READS or name in SENDS or name in OWN_LINES or name.startswith(OWN_PREFIXES):
        return False
    return not (verb.startswith(READ_VERBS) or verb.endswith("stats"))


def actor(principal: Principal) -> str:
    """Who, as the log says it: ``admin``, ``user:<id> (api_key|session)``, ``sender-key:<id>``."""
    if principal.is_admin:
        return "admin"
    if principal.kind == "sender_key":
        return f"sender-key:{principal.api_key_id} (user {principal.user_id})"
    if principal.kind == "user":
        return f"user:{principal.user_id}" + (f" ({principal.via})" if principal.via else "")
    return principal.kind


def record(
    command: str,
    principal: Principal,
    client: str | None,
    params: Params,
    error_code: int,
    result: Mapping[str, Any] | None = None,
) -> None:
    """The change's log line (nothing for a command that is not a change)."""
    if not changes(command):
        return
    named: dict[str, Any] = {}
    for param, key in NAMED.items():
        value = params.raw(param)
        if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            continue
        named[key] = value if isinstance(value, int) else str(value)[:MAX_VALUE]
    # What the change made: the new object's id (an integer; never a key or session).
    for key, value in (result or {}).items():
        if key.endswith("ID") and isinstance(value, int) and not isinstance(value, bool):
            named.setdefault(f"new_{key.lower().removeprefix('new')}", value)
    log.info(
        "admin change",
        command=command,
        by=actor(principal),
        client=client,
        error_code=error_code,
        **named,
    )
