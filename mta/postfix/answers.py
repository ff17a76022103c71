"""The relay-domain question as Postfix asks it: a domain or an address -> relay or not.

The answer comes from the in-memory set behind ``/api/v1/inbound-relay-domain-check``
(``relay.admin.relay_domain_set.RelayDomains``), never from the database, and is the same:
the domain part of the key, compared case-insensitively without a trailing dot, must be an Enabled
gateway domain exactly. Postfix asks a socketmap or policy server only the full domain, never
its parents (socketmap_table(5): no partial keys), and the relay does not add parent matching
either: ``sub.example.com`` is a relay domain only when it is itself an Enabled gateway domain.
A customer's verification covers the name they verified, and a subdomain may be delegated to
someone else entirely.

"Cannot tell" (TEMP for a socketmap, DEFER_IF_PERMIT for a policy request) when the set was
never loaded, or was last loaded longer ago than ``mx.lookup_max_stale`` (the database has
been unreachable that long): Postfix then answers 4xx and the sender retries, rather than mail
being accepted or refused on stale knowledge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.admin.commands.relay_domains import relay_domain_of

MAX_KEY = 1024  # longer than any address (RFC 5321 4.5.3.1.3: 256 for a path)

Verdict = Literal["found", "notfound", "temp"]


class DomainSet(Protocol):
    loaded_at: float

    async def contains(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    value: str = ""  # the domain (found) or the reason (temp)


class RelayDomainAnswers:
    def __init__(self, domains: DomainSet, max_stale: float) -> None:
        self.domains = domains
        self.max_stale = max_stale

    async def lookup(self, key: str) -> Answer:
        if len(key) > MAX_KEY:
            return Answer("notfound")
        loaded = self.domains.loaded_at
        if not loaded or time.monotonic() - loaded > self.max_stale:
            return Answer("temp", "relay domain list not available")
        domain = relay_domain_of(key)
        if domain and await self.domains.contains(domain):
            return Answer("found", domain)
        return Answer("notfound")
