"""Live DNS verification of the records a domain's owner must publish.

Lookups go through dnspython's async resolver to ``settings.dns.nameservers`` ("ip" or
"ip:port"; the system's resolvers when empty) and are cached ``settings.dns.cache_ttl`` seconds:
in Redis when configured, so every node gives the same answer and a burst of verify calls
costs one query per record, else in-process. A timeout or SERVFAIL is an answer like any
other ("not verified"), never an exception for the caller.

Matching (what "verified" means for each record type):
- TXT: the record's character-strings are joined first (RFC 7208 3.3, RFC 6376 3.6.2.2), then
  - DKIM (``v=DKIM1``): a TXT record whose ``p=`` equals ours, whitespace ignored (RFC 6376
    3.6.1: whitespace in ``p=`` is ignored); the other tags are the owner's choice;
  - SPF (``v=spf1``): exactly one SPF record on the name (two is a permerror, RFC 7208 4.5)
    containing each ``include:`` of ours (other mechanisms are the owner's choice);
  - DMARC (``v=DMARC1``): any DMARC record (the policy is the owner's choice);
  - anything else: equal after collapsing whitespace;
- CNAME: the target, case-insensitive, trailing dot ignored;
- A/AAAA: the address among the answers; MX: the exchange among the answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import structlog

from relay import metrics
from relay.cache import MISSING, TTLCache
from relay.config import DnsSettings
from relay.dns.records import is_advisory
from relay.dns.resolver import build_resolver

log = structlog.get_logger("relay.dns")

OK, NXDOMAIN, NODATA, ERROR = "ok", "nxdomain", "nodata", "error"
SUPPORTED_TYPES = ("TXT", "CNAME", "A", "AAAA", "MX")


@dataclass(frozen=True, slots=True)
class Lookup:
    status: str  # ok | nxdomain | nodata | error
    answers: tuple[str, ...] = ()

    @property
    def definitive(self) -> bool:
        """A real answer from DNS (as opposed to a timeout or a server failure)."""
        return self.status != ERROR


def _norm_host(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _dkim_tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = tag_value.strip()
    return tags


def _no_space(value: str) -> str:
    return re.sub(r"\s+", "", value)


def _spf_includes(record: str) -> set[str]:
    """The include: targets of an SPF record that pass (qualifier '+' or none)."""
    out = set()
    for term in record.split()[1:]:
        term = term.lower()
        if term.startswith("+"):
            term = term[1:]
        if term.startswith("include:"):
            out.add(_norm_host(term[len("include:") :]))
    return out


def _is_spf(record: str) -> bool:
    # RFC 7208 4.5: "v=spf1" followed by a space or the end of the record.
    lowered = record.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


def txt_matches(expected: str, answers: Iterable[str]) -> bool:
    answers = list(answers)
    exp_lower = expected.strip().lower()
    if exp_lower.startswith("v=dkim1"):
        want = _no_space(_dkim_tags(expected).get("p", ""))
        if not want:
            return False
        return any(
            _no_space(_dkim_tags(a).get("p", "")) == want
            for a in answers
            if _dkim_tags(a).get("v", "DKIM1").upper() == "DKIM1"
        )
    if _is_spf(exp_lower):
        spf = [a for a in answers if _is_spf(a.strip())]
        if len(spf) != 1:
            return False
        return _spf_includes(expected) <= _spf_includes(spf[0])
    if exp_lower.startswith("v=dmarc1"):
        return any(_no_space(a).lower().startswith("v=dmarc1;") for a in answers)
    want = " ".join(expected.split())
    return any(" ".join(a.split()) == want for a in answers)


def matches(rtype: str, expected: str, lookup: Lookup) -> bool:
    """Whether a lookup's answers contain the expected record (rules in the module doc)."""
    if lookup.status != OK:
        return False
    rtype = rtype.upper()
    if rtype == "TXT":
        return txt_matches(expected, lookup.answers)
    if rtype == "CNAME":
        return _norm_host(expected) in {_norm_host(a) for a in lookup.answers}
    if rtype in ("A", "AAAA"):
        try:
            want = ipaddress.ip_address(expected.strip())
        except ValueError:
            return False
        return any(ipaddress.ip_address(a) == want for a in lookup.answers)
    if rtype == "MX":
        # "<preference> <exchange>" or just the exchange: the exchange is what matters.
        exchange = _norm_host(expected.split()[-1]) if expected.split() else ""
        return exchange in {_norm_host(a.split()[-1]) for a in lookup.answers}
    return False


class DnsChecker:
    """Cached lookups through the configured resolvers."""

    KEY_PREFIX = "relay:dns:"

    def __init__(self, settings: DnsSettings, redis: Any = None) -> None:
        self.settings = settings
        self.redis = redis
        self._local: TTLCache[tuple[str, str], Lookup] = TTLCache(50_000, settings.cache_ttl)
        self._resolver: dns.asyncresolver.Resolver | None = None

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = build_resolver(self.settings)
        return self._resolver

    def _key(self, host: str, rtype: str) -> str:
        return f"{self.KEY_PREFIX}{rtype}:{host}"

    async def lookup(self, host: str, rtype: str) -> Lookup:
        """The answers for (host, type), from the cache when fresh."""
        host, rtype = _norm_host(host), rtype.upper()
        if self.settings.cache_ttl <= 0:
            return await self._resolve(host, rtype)
        if self.redis is not None:
            cached = await self._redis_get(host, rtype)
            if cached is not None:
                return cached
        else:
            hit = self._local.get((host, rtype))
            if hit is not MISSING:
                return hit
        result = await self._resolve(host, rtype)
        if self.redis is not None:
            await self._redis_set(host, rtype, result)
        else:
            self._local.set((host, rtype), result)
        return result

    async def _redis_get(self, host: str, rtype: str) -> Lookup | None:
        try:
            raw = await self.redis.get(self._key(host, rtype))
        except Exception:
            log.warning("dns cache read failed", host=host)
            return None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Lookup(str(data["s"]), tuple(str(a) for a in data["a"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def _redis_set(self, host: str, rtype: str, result: Lookup) -> None:
        payload = json.dumps({"s": result.status, "a": list(result.answers)})
        ttl = max(1, round(self.settings.cache_ttl))
        try:
            await self.redis.set(self._key(host, rtype), payload, ex=ttl)
        except Exception:
            log.warning("dns cache write failed", host=host)

    async def forget(self, records: Iterable[tuple[str, str]]) -> None:
        """Drop cached answers (after the owner changed which records are expected)."""
        keys = [(_norm_host(h), r.upper()) for h, r in records]
        for key in keys:
            self._local.pop(key)
        if self.redis is not None and keys:
            try:
                await self.redis.delete(*(self._key(h, r) for h, r in keys))
            except Exception:
                log.warning("dns cache invalidation failed")

    async def _resolve(self, host: str, rtype: str) -> Lookup:
        result = await self._query(host, rtype)
        metrics.DNS_LOOKUPS.labels(rtype, result.status).inc()
        return result

    async def _query(self, host: str, rtype: str) -> Lookup:
        if rtype not in SUPPORTED_TYPES:
            return Lookup(ERROR)
        try:
            answer = await self.resolver().resolve(
                dns.name.from_text(host), rtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return Lookup(NXDOMAIN)
        except (dns.exception.DNSException, OSError) as exc:
            # Timeout, SERVFAIL from every server, no resolver configuration, network error.
            log.info("dns lookup failed", host=host, type=rtype, error=type(exc).__name__)
            return Lookup(ERROR)
        if answer.rrset is None:
            return Lookup(NODATA)
        out: list[str] = []
        for rdata in answer.rrset:
            if rtype == "TXT":
                out.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif rtype == "CNAME":
                out.append(rdata.target.to_text())
            elif rtype == "MX":
                out.append(f"{rdata.preference} {rdata.exchange.to_text()}")
            else:
                out.append(rdata.address)
        return Lookup(OK, tuple(out))


@dataclass(frozen=True)
class Outcome:
    records: dict[str, list[Any]]  # host -> [type, value, verified]
    all_required: bool  # every non-advisory record verified
    # Every failed required record failed on a definitive answer (not a timeout/SERVFAIL).
    definitive: bool


async def verify_records(checker: DnsChecker, records: dict[str, list[Any]]) -> Outcome:
    """Look every record up (concurrently) and return them with fresh verified flags."""
    hosts = list(records)
    lookups = await asyncio.gather(*(checker.lookup(host, str(records[host][0])) for host in hosts))
    out: dict[str, list[Any]] = {}
    all_required, definitive = True, True
    for host, lookup in zip(hosts, lookups, strict=True):
        rtype, value = str(records[host][0]), str(records[host][1])
        ok = matches(rtype, value, lookup)
        out[host] = [rtype, value, ok]
        if not ok and not is_advisory(host):
            all_required = False
            definitive = definitive and lookup.definitive
    return Outcome(out, all_required, definitive)


def status_after(current: str, outcome: Outcome) -> str:
    """The domain status a verification leads to.

    Enabled when every required record verifies, else Approval Pending. Two exceptions keep a
    working or administratively decided state: a Disabled (or Deleted) domain is never changed
    by its owner's verification, and an Enabled domain is not demoted when the only failures
    are resolver errors (timeout, SERVFAIL): a DNS outage must not stop a customer's mail.
    """
    if current not in ("Enabled", "Approval Pending"):
        return current
    if outcome.all_required:
        return "Enabled"
    if current == "Enabled" and not outcome.definitive:
        return "Enabled"
    return "Approval Pending"
