"""Send-time SSRF defence: resolve a webhook's host, refuse non-public addresses, and make the
HTTP client connect to exactly the addresses that were checked.

A name is resolved through the configured nameservers (``dns.nameservers``, dnspython's async
resolver, A and AAAA at once). If any answer is an address a webhook may not reach
(``urls.is_refused``: every private, loopback, link-local, ... range in every IPv6 wrapping,
unless inside ``webhooks.allow_networks``) the name is refused as a whole. aiohttp asks this
resolver for the addresses it connects to, and it returns only checked ones, so there is no
second lookup an attacker's DNS could answer differently (DNS rebinding); the URL keeps the
name, so the Host header and TLS SNI and certificate checks still use it. Answers are cached
for their DNS TTL, at most ``MAX_CACHE`` seconds; refusals and failures for ``NEGATIVE_CACHE``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.config import DnsSettings
from relay.dns.resolver import build_resolver
from relay.webhooks.urls import Address, Network, is_refused

MAX_CACHE = 60.0
NEGATIVE_CACHE = 5.0


class AddressRefused(OSError):
    """The host is, or resolves to, an address webhooks may not reach."""


class NoAddress(OSError):
    """The host does not resolve (NXDOMAIN, no A/AAAA, timeout, server failure)."""


# The verdict depends on the address and the exemptions only: asked once per pair (a webhook
# URL with an address literal is checked before every POST).
_refused = functools.lru_cache(maxsize=4096)(is_refused)


def check_address(ip: Address, allow: tuple[Network, ...], host: str = "") -> None:
    if _refused(ip, allow):
        where = f"{host} resolves to {ip}" if host and host != str(ip) else str(ip)
        raise AddressRefused(f"{where}, which is not a public address")


class CheckedResolver(AbstractResolver):
    def __init__(self, settings: DnsSettings, allow: tuple[Network, ...]) -> None:
        self.settings = settings
        self.allow = allow
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: dict[str, tuple[float, list[Address] | OSError]] = {}

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = build_resolver(self.settings)
        return self._resolver

    async def checked(self, host: str) -> list[Address]:
        """The host's addresses, every one allowed; raises AddressRefused or NoAddress."""
        host = host.lower().rstrip(".")
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            check_address(literal, self.allow)
            return [literal]
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], OSError):
                raise hit[1]
            return hit[1]
        try:
            addresses, ttl = await self._lookup(host)
            for ip in addresses:
                check_address(ip, self.allow, host)
        except OSError as exc:
            self._remember(host, now + NEGATIVE_CACHE, exc)
            raise
        self._remember(host, now + min(ttl, MAX_CACHE), addresses)
        return addresses

    def _remember(self, host: str, until: float, value: list[Address] | OSError) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[host] = (until, value)

    async def _lookup(self, host: str) -> tuple[list[Address], float]:
        name = dns.name.from_text(host)
        answers = await asyncio.gather(
            *(self._query(name, rtype) for rtype in ("A", "AAAA")), return_exceptions=True
        )
        addresses: list[Address] = []
        ttl = MAX_CACHE
        errors: list[str] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                errors.append(str(answer) if isinstance(answer, NoAddress) else repr(answer))
                continue
            if answer.rrset is None:
                continue
            ttl = min(ttl, float(answer.rrset.ttl))
            addresses.extend(ipaddress.ip_address(r.address) for r in answer.rrset)
        if not addresses:
            raise NoAddress(errors[0] if errors else f"{host} has no A or AAAA record")
        return addresses, max(ttl, 0.0)

    async def _query(self, name: dns.name.Name, rtype: str) -> dns.resolver.Answer:
        try:
            return await self._dns().resolve(name, rtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise NoAddress(f"{name} does not exist") from None
        except dns.exception.DNSException as exc:
            raise NoAddress(f"{name}: {type(exc).__name__}") from None

    # -- aiohttp's resolver interface: the addresses it will connect to -----------------------

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for ip in await self.checked(host):
            fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, fam):
                continue
            out.append(
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not out:
            raise NoAddress(f"{host} has no address of the requested family")
        # IPv4 first: most receivers listen there, and many hosts have no IPv6 route.
        out.sort(key=lambda r: r["family"] != socket.AF_INET)
        return out

    async def close(self) -> None:
        self._cache.clear()
