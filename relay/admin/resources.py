"""Long-lived objects of the admin app, created with it and stopped with it.

- the DNS checker (its in-process cache must outlive a request);
- the in-memory set of Enabled relay domains behind the MX check;
- emailgateway.smtprelay's idempotency keys (they purge expired keys now and then).
Commands reach them through ``call.request.app[...]``.
"""

from __future__ import annotations

from aiohttp import web

from relay.admin.idempotency import IdempotencyKeys
from relay.admin.relay_domain_set import RelayDomains
from relay.dns.verify import DnsChecker
from relay.services import Services

DNS_CHECKER = web.AppKey("dns_checker", DnsChecker)
RELAY_DOMAINS = web.AppKey("relay_domains", RelayDomains)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyKeys)


def install(app: web.Application, services: Services) -> None:
    app[DNS_CHECKER] = DnsChecker(services.settings.dns, services.redis)
    app[IDEMPOTENCY] = IdempotencyKeys(services.db)
    relay_domains = RelayDomains(services, services.settings.admin.relay_domains_refresh)
    app[RELAY_DOMAINS] = relay_domains

    async def start(_app: web.Application) -> None:
        await relay_domains.start()

    async def stop(_app: web.Application) -> None:
        await relay_domains.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
