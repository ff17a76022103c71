"""The one way the relay builds a DNS resolver: the configured nameservers
(``dns.nameservers``, ``ip`` or ``ip:port``) or the system's, with the configured timeout."""

from __future__ import annotations

import dns.asyncresolver
import dns.nameserver

from relay.config import DnsSettings, parse_hostport

# Per query attempt; the whole lookup is bounded by dns.timeout.
ATTEMPT_TIMEOUT = 2.0


def build_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    configured = settings.nameservers
    res = dns.asyncresolver.Resolver(configure=not configured)
    if configured:
        servers: list[str | dns.nameserver.Nameserver] = []
        for item in configured:
            host, port = parse_hostport(item, 53)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        res.nameservers = servers
    res.lifetime = settings.timeout
    res.timeout = min(ATTEMPT_TIMEOUT, settings.timeout)
    return res
