"""What MTAs ask the relay: PowerMTA's domain lists and the MX servers' relay-domain check
(seed 001: sender.domains, /api/v1/inbound-relay-domain-check)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mta.powermta.lists import domain_lists, render
from relay import metrics
from relay.addresses import ascii_domain
from relay.admin import auth
from relay.admin.dispatcher import Call, command, json_response
from relay.admin.errors import ApiError
from relay.admin.resources import RELAY_DOMAINS
from relay.store.repos import domains as repo

JSON, BOUNCE, RELAY = "json", "powermta-bounce-domains", "powermta-relay-domains"
FORMATS = (JSON, BOUNCE, RELAY)
# Bound once: the check is on the MX servers' hot path.
ALLOWED = metrics.RELAY_DOMAIN_CHECKS.labels("allowed")
DENIED = metrics.RELAY_DOMAIN_CHECKS.labels("denied")
AUTH_FAILED = metrics.RELAY_DOMAIN_CHECKS.labels("auth_failed")


def _text(lines: list[str], what: str) -> web.Response:
    return web.Response(text=render(lines, what), content_type="text/plain")


@command(
    "sender.domains",
    auth="admin",
    rate_limited=True,
    routes=(("POST", "/api/v1/sender.domains"),),
)
async def sender_domains(call: Call) -> dict[str, Any] | web.Response:
    """Every Enabled sender domain, for PowerMTA configuration (admin).

    DomainsResponseFormat ``json`` (default): ``{"Success": true, "Domains": [...]}``, the
    domain names. ``powermta-relay-domains``: a text file for PowerMTA's ``include``, one
    ``relay-domain <name>`` line per domain and per return-path (MAIL FROM) host, so PowerMTA
    accepts replies, feedback reports and bounces for them. ``powermta-bounce-domains``: one
    ``domain <return-path host>`` line per domain, for an ``<address-list>`` inside
    PowerMTA's ``<bounce-processor>`` (see config/powermta/). Rate limited like the v1 routes.

    Errors:
    1: Invalid DomainsResponseFormat (must be json, powermta-bounce-domains, or powermta-relay-domains)
    """  # noqa: E501
    fmt = (call.params.str("DomainsResponseFormat") or JSON).lower()
    if fmt not in FORMATS:
        raise ApiError(1, "Invalid DomainsResponseFormat")
    async with call.services.db.read() as conn:
        rows = await repo.enabled(conn)
    if fmt == JSON:
        return {"Success": True, "Domains": sorted({row.name for row in rows})}
    lists = domain_lists(rows, call.services.settings)  # the same as `relay pmta-sync` writes
    if fmt == RELAY:
        return _text(lists.relay, "relay domains")
    return _text(lists.bounce, "bounce domains")


def relay_domain_of(value: str) -> str:
    """The domain of ``example.com``, ``user@example.com`` or ``<user@Example.COM.>``."""
    value = value.strip().strip("<>").strip()
    domain = value.rpartition("@")[2].rstrip(".").lower()
    return domain if domain.isascii() else (ascii_domain(domain) or domain)


@command(
    "inbound-relay-domain-check",
    auth="none",
    style="v1",
    routes=(("GET", "/api/v1/inbound-relay-domain-check"),),
    aliases=("inbound.relaydomaincheck",),
)
async def inbound_relay_domain_check(call: Call) -> web.Response:
    """May an MX server accept mail for this domain? (admin key as Bearer or AdminAPIKey)

    Domain may be a full address; matching is case-insensitive, against the Enabled gateway
    domains held in memory (no database query per check). HTTP 200
    ``{"Success": true, "RelayDomain": "<domain>"}`` when allowed, HTTP 500 ``{}`` when not,
    HTTP 403 with the error below when the admin key is wrong.

    Errors:
    1: Authentication failed - Invalid admin API key
    """
    if auth.admin_from(call.services, call.request, call.params) is None:
        AUTH_FAILED.inc()
        raise ApiError(1, "Authentication failed. Invalid admin API key.", status=403, style="v1")
    domain = relay_domain_of(call.params.str("Domain") or "")
    if domain and await call.request.app[RELAY_DOMAINS].contains(domain):
        ALLOWED.inc()
        return json_response({"Success": True, "RelayDomain": domain})
    DENIED.inc()
    return json_response({}, status=500)
