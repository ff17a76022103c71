"""Webhooks: where a sender domain's events are posted, the key that signs them, and what
happened to each post (001: emailgateway.addwebhook, getwebhooks, deletewebhook,
regeneratesigningkey, and the public ``/api/v1/webhooks``; emailgateway.getwebhookdeliveries).

Event names: the internal commands take ``delivery``, ``bounce``, ``open``, ``click``,
``unsubscribe``, ``complaint``; the public route takes ``delivered``, ``bounced``, ``opened``,
``clicked``, ``unsubscribed``, ``complained``. Both spellings are accepted everywhere (002
lists the internal names for the public route too) and each route answers in its own.

Webhook URLs (SSRF): the scheme must be http or https and the host may not be a local name or a
non-public address in any notation. The host is read the way an HTTP client would connect to
it: percent-decoded, IDNA-mapped, lower-cased, without trailing dot, after any userinfo; IPv4
in every inet_aton form (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) and IPv6 in
any form (``[::1]``, ``[0:0:0:0:0:0:0:1]``, ``[::ffff:127.0.0.1]``, ``[::ffff:7f00:1]``).
Refused: ``localhost`` and ``*.localhost``, ``*.local``, ``*.localdomain``, ``*.internal``,
single-label names, and loopback, private (10/8, 172.16/12, 192.168/16), link-local
(169.254/16, fe80::/10), unspecified (0.0.0.0/8, ::), CGNAT (100.64/10), unique-local
(fc00::/7), multicast, reserved and documentation addresses, IPv4-mapped and IPv4-compatible
IPv6, and 6to4/NAT64 addresses embedding one of those. Names are checked again when posting:
the name is resolved and every address must pass the same rules (so a name that resolves to a
private address is refused then), and the post goes to the address that was checked. The
operator's ``webhooks.allow_networks`` exempts addresses inside those networks, at both times.

Deliveries: every event a webhook subscribes to is POSTed to its URL as JSON
(``{"type": "delivered", "timestamp": "<ISO 8601 UTC>", "data": {...}}``), signed the Standard
Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64
HMAC-SHA256>`` over ``<id>.<timestamp>.<body>``, keyed with the SigningKey's UTF-8 bytes). A
2xx answer delivers it; anything else (and a timeout or a connection failure) is retried with
exponential backoff, the same ``webhook-id`` every time, for three days by default, then given
up (a ``webhook-failed`` event). Redirects are not followed. getwebhooks shows each webhook's
last attempt and its failures since the last success; getwebhookdeliveries lists the attempts.

Signing key: every sender domain has its own key, 64 upper-case hex characters (256 random
bits), made with the domain and stored encrypted when a key-encryption key is set; getwebhooks
returns it. regeneratesigningkey replaces it; the next post (retries included) is signed with
the new key. Other domains keep theirs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from relay import events
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import domain_id_param, owned_domain
from relay.admin.senderkey import sender_scope
from relay.directory import Topics
from relay.secrets import new_signing_key
from relay.store.repos import domains as domains_repo
from relay.store.repos import webhooks as repo
from relay.webhooks.keys import domain_key
from relay.webhooks.payload import iso_utc
from relay.webhooks.urls import UrlRefused, check_webhook_url, parse_networks

PUBLIC_ROUTE = "/api/v1/webhooks"
INTERNAL_EVENTS = ", ".join(events.WEBHOOK_EVENTS)
DEFAULT_ATTEMPTS = 20
MAX_ATTEMPTS = 100
# The largest id any of our tables hands out on both backends (PostgreSQL integer).
MAX_ID = 2**31 - 1


def _err(code: int, text: str) -> ApiError:
    # addwebhook's error body carries "ErrorMessage" (001).
    return ApiError(code, text, text_key="ErrorMessage")


def _checked_url(call: Call, url: str) -> str:
    allow = parse_networks(call.services.settings.webhooks.allow_networks)
    return check_webhook_url(url, allow)


def _when(ts: float | None) -> str | None:
    """Epoch seconds as the documents print times (UTC), or None."""
    return iso_utc(ts)[:19].replace("T", " ") if ts is not None else None


def _webhook(row: Row) -> dict[str, Any]:
    """A getwebhooks entry: the documented fields, then the delivery side's."""
    return {
        "WebhookID": row.id,
        "Event": row.event,
        "WebhookURL": row.url,
        "LastAttemptAt": _when(row.last_attempt_at),
        "LastStatus": row.last_status,
        "LastError": row.last_error,
        "FailureCount": row.failures,
    }


@command("emailgateway.addwebhook", auth="user")
async def add_webhook(call: Call) -> dict[str, Any]:
    """Register a URL to receive one kind of event of a sender domain.

    Parameters:
        DomainID (Integer, required): the sender domain.
        Event (String, required): delivery, bounce, open, click, unsubscribe or complaint.
        WebhookURL (String, required): an http or https URL on a public host (see above).

    Errors:
        1: Missing required parameter (DomainID)
        2: Missing required parameter (Event)
        3: Invalid event type
        4: Domain not found or access denied
        5: Missing required parameter (WebhookURL)
        6: WebhookURL is not a valid HTTP or HTTPS URL (e.g. ftp:// or malformed)
        7: WebhookURL host is forbidden (localhost, 127.0.0.1, ::1, or *.local)
    """
    p = call.params
    try:
        domain_id = p.int("DomainID")
    except ValueError:
        raise _err(4, "Domain not found or access denied") from None
    if domain_id is None:
        raise _err(1, "Missing required parameter (DomainID)")
    if not p.present("Event"):
        raise _err(2, "Missing required parameter (Event)")
    if not p.present("WebhookURL"):
        raise _err(5, "Missing required parameter (WebhookURL)")
    event = events.webhook_event(p.str("Event") or "")
    if event is None:
        raise _err(3, f"Invalid event type (one of {INTERNAL_EVENTS})")
    try:
        url = _checked_url(call, p.str("WebhookURL") or "")
    except UrlRefused as exc:
        if exc.forbidden:
            raise _err(7, f"Webhook URL host is forbidden: {exc.reason}.") from None
        raise _err(6, "Webhook URL must be a valid HTTP or HTTPS URL.") from None
    async with call.services.db.write() as conn:
        if await domains_repo.get(conn, domain_id, user_id=call.user_id) is None:
            raise _err(4, "Domain not found or access denied")
        webhook_id = await repo.create(
            conn, user_id=call.user_id, domain_id=domain_id, event=event, url=url
        )
    return ok(NewWebhookID=webhook_id)


@command("emailgateway.getwebhooks", auth="user")
async def get_webhooks(call: Call) -> dict[str, Any]:
    """List a sender domain's webhooks and the domain's signing key.

    Each webhook also shows how its deliveries go: LastAttemptAt (UTC, null before the first
    attempt), LastStatus (the HTTP status of the last attempt, null when there was no answer),
    LastError (why the last attempt failed, e.g. "HTTP 503" or "timeout"; "" when it
    succeeded) and FailureCount (failed attempts since the last successful one).

    Parameters:
        DomainID (Integer, required): the sender domain.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.read() as conn:
        domain = await domains_repo.get(conn, domain_id, user_id=call.user_id)
        if domain is None:
            raise ApiError(2, "Domain not found or access denied")
        rows = await repo.list_for_domain(conn, domain_id)
    services = call.services
    key = await domain_key(services.db, services.box, domain_id, domain.signing_key)
    return ok(SigningKey=key, Webhooks=[_webhook(r) for r in rows])


@command("emailgateway.deletewebhook", auth="user")
async def delete_webhook(call: Call) -> dict[str, Any]:
    """Delete a webhook of a sender domain.

    Parameters:
        WebhookID (Integer, required): the webhook.
        DomainID (Integer, required): the sender domain it belongs to.

    Errors:
        1: Missing required parameter (WebhookID)
        2: Missing required parameter (DomainID)
        3: Domain not found or access denied
        4: Webhook not found or access denied
    """
    p = call.params
    try:
        webhook_id = p.int("WebhookID")
    except ValueError:
        raise ApiError(4, "Webhook not found or access denied") from None
    if webhook_id is None:
        raise ApiError(1, "Missing required parameter (WebhookID)")
    domain_id = domain_id_param(call, 2, 3)
    async with call.services.db.write() as conn:
        await owned_domain(conn, call, domain_id, 3, "Domain not found or access denied")
        if await repo.get_in_domain(conn, webhook_id, domain_id) is None:
            raise ApiError(4, "Webhook not found or access denied")
        await repo.disable(conn, webhook_id)
    return ok()


@command("emailgateway.regeneratesigningkey", auth="user")
async def regenerate_signing_key(call: Call) -> dict[str, Any]:
    """Give a sender domain a new webhook signing key (64 upper-case hex characters, 256 bits)
    and return it. From the next attempt on (retries of earlier events included) the domain's
    payloads are signed with it, and getwebhooks returns it; other domains keep their keys.

    Parameters:
        DomainID (Integer, required): the sender domain; must be owned by the caller.

    Errors:
        1: Missing required parameter (DomainID)
        2: Domain not found or not owned by the caller
        3: Rotation failed — the UPDATE matched zero rows (typically because the domain was deleted between the ownership check and the rotation). No key was persisted; safe to retry.
    """  # noqa: E501 (the document's error text, verbatim)
    domain_id = domain_id_param(call, 1, 2)
    async with call.services.db.read() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or not owned by the caller")
    key = new_signing_key()
    async with call.services.db.write() as conn:
        matched = await repo.set_signing_key(
            conn, domain_id, call.user_id, call.services.box.seal(key)
        )
    if matched == 0:
        raise ApiError(
            3,
            "Rotation failed — the UPDATE matched zero rows. No key was persisted; safe to retry.",
        )
    # Webhook workers of every process and node drop the old key: the next post uses this one.
    await call.services.bus.publish(Topics.DOMAIN, domain_id)
    return ok(SigningKey=key)


@command("emailgateway.getwebhookdeliveries", auth="user")
async def get_webhook_deliveries(call: Call) -> dict[str, Any]:
    """List a webhook's most recent delivery attempts, newest first, and how many of its
    deliveries are still to be posted (PendingDeliveries) or retried.

    Each attempt: AttemptID, WebhookMessageID (the webhook-id header, the same on every
    attempt of one delivery), Event, MessageID, Recipient, Attempt (1 for the first),
    AttemptedAt (UTC), Result (delivered, retry or failed = given up), HTTPStatus (null when
    there was no answer), LatencyMs, Error (why it failed; "" when delivered) and Response (the
    start of the answer's body). Attempts are kept webhooks.retention_days days.

    Parameters:
        DomainID (Integer, required): the sender domain.
        WebhookID (Integer, required): the webhook.
        RetrieveCount (Integer): how many attempts, 1 to 100 (default 20).

    Errors:
        1: Missing required parameter (WebhookID)
        2: Missing required parameter (DomainID)
        3: Domain not found or access denied
        4: Webhook not found or access denied
        5: RetrieveCount must be a whole number from 1 to 100
    """
    p = call.params
    try:
        webhook_id = p.int("WebhookID")
    except ValueError:
        raise ApiError(4, "Webhook not found or access denied") from None
    if webhook_id is None:
        raise ApiError(1, "Missing required parameter (WebhookID)")
    domain_id = domain_id_param(call, 2, 3)
    try:
        count = p.int("RetrieveCount")
    except ValueError:
        count = 0
    count = DEFAULT_ATTEMPTS if count is None else count
    if not 1 <= count <= MAX_ATTEMPTS:
        raise ApiError(5, "RetrieveCount must be a whole number from 1 to 100")
    if not 0 < domain_id <= MAX_ID:
        raise ApiError(3, "Domain not found or access denied")
    if not 0 < webhook_id <= MAX_ID:
        raise ApiError(4, "Webhook not found or access denied")
    async with call.services.db.read() as conn:
        await owned_domain(conn, call, domain_id, 3, "Domain not found or access denied")
        hook = await repo.get_in_domain(conn, webhook_id, domain_id)
        if hook is None:
            raise ApiError(4, "Webhook not found or access denied")
        rows = await repo.recent_attempts(conn, webhook_id, count)
        pending = await repo.pending_count(conn, webhook_id)
    return ok(
        WebhookID=webhook_id,
        PendingDeliveries=pending,
        FailureCount=hook.failures,
        Attempts=[
            {
                "AttemptID": r.id,
                "WebhookMessageID": r.msg_id,
                "Event": r.event,
                "MessageID": r.message_id,
                "Recipient": r.recipient,
                "Attempt": r.attempt,
                "AttemptedAt": _when(r.attempted_at),
                "Result": r.outcome,
                "HTTPStatus": r.status,
                "LatencyMs": round(r.latency * 1000),
                "Error": r.error,
                "Response": r.response,
            }
            for r in rows
        ],
    )


# -- public API: /api/v1/webhooks, authenticated by the sender domain's API key ----------------


def _public_event(value: str | None) -> str | None:
    return events.webhook_event(value or "")


@command(
    "emailgateway.addwebhook.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("POST", PUBLIC_ROUTE),),
)
async def add_webhook_public(call: Call) -> dict[str, Any]:
    """Register a webhook for the API key's sender domain.

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.
        Event (String, required): delivered, bounced, opened, clicked, unsubscribed or complained.
        WebhookURL (String, required): an http or https URL on a public host.

    Errors:
        2: Event is missing
        3: Invalid event type or invalid webhook URL
        5: WebhookURL is missing
        13: Invalid SenderAPIKey
        429: Too many requests
    """
    p = call.params
    problems: list[tuple[int, str]] = []
    event = _public_event(p.str("Event"))
    if not p.present("Event"):
        problems.append((2, "Event is missing"))
    elif event is None:
        problems.append((3, "Invalid Event value"))
    url = ""
    if not p.present("WebhookURL"):
        problems.append((5, "WebhookURL is missing"))
    else:
        try:
            url = _checked_url(call, p.str("WebhookURL") or "")
        except UrlRefused as exc:
            problems.append((3, f"Invalid WebhookURL value: {exc.reason}"))
    if problems:
        raise ApiError([c for c, _ in problems], [m for _, m in problems], status=400)
    assert event is not None
    scope = await sender_scope(call, ApiError(13, "Invalid SenderAPIKey", status=401))
    async with call.services.db.write() as conn:
        webhook_id = await repo.create(
            conn, user_id=scope.user.id, domain_id=scope.domain.id, event=event, url=url
        )
    return {"NewWebhookID": webhook_id}


@command(
    "emailgateway.getwebhooks.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("GET", PUBLIC_ROUTE),),
)
async def get_webhooks_public(call: Call) -> dict[str, Any]:
    """List the webhooks of the API key's sender domain.

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.

    Errors:
        2: Invalid user account
        13: Invalid SenderAPIKey
        429: Too many requests
    """
    scope = await sender_scope(call, ApiError(2, "Invalid user account", status=403))
    async with call.services.db.read() as conn:
        rows = await repo.list_for_domain(conn, scope.domain.id)
    return {
        "Webhooks": [
            {
                "WebhookID": r.id,
                "Event": events.public_webhook_name(r.event),
                "WebhookURL": r.url,
            }
            for r in rows
        ]
    }


@command(
    "emailgateway.deletewebhook.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("DELETE", PUBLIC_ROUTE),),
)
async def delete_webhook_public(call: Call) -> dict[str, Any]:
    """Delete a webhook of the API key's sender domain. Answers ``{}``.

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.
        WebhookID (Integer, required): the webhook.

    Errors:
        1: WebhookID is missing
        2: Invalid user account
        4: Invalid WebhookID
        13: Invalid SenderAPIKey
        429: Too many requests
    """
    p = call.params
    if not p.present("WebhookID"):
        raise ApiError(1, "WebhookID is missing", status=400)
    scope = await sender_scope(call, ApiError(2, "Invalid user account", status=403))
    try:
        webhook_id = p.int("WebhookID")
    except ValueError:
        webhook_id = None
    async with call.services.db.write() as conn:
        if (
            webhook_id is None
            or await repo.get_in_domain(conn, webhook_id, scope.domain.id) is None
        ):
            raise ApiError(4, "Invalid WebhookID", status=404)
        await repo.disable(conn, webhook_id)
    return {}
