"""The DNS records a gateway domain's owner must publish.

- DKIM: ``<selector>._domainkey.<domain>`` TXT ``v=DKIM1; k=rsa; p=<public key>`` (RFC 6376 3.6.1)
- SPF: ``<domain>`` TXT ``v=spf1 include:<spf_include> ~all`` (RFC 7208)
- Return path: ``<subdomain>.<domain>`` CNAME to the bounce host (the MAIL FROM domain)
- Tracking: ``<prefix><merge><subdomain>.<domain>`` CNAME to the tracking host, unless disabled
- DMARC: ``_dmarc.<domain>`` TXT, advisory only: it never holds a domain back from Enabled.

Stored and returned as ``{host: [type, value, verified]}``.

User sender domains (seed 003) publish fewer records (``sender_domain_records``): the MFROM
subdomain and the tracking subdomain as CNAMEs to our hosts (SPF for the MAIL FROM domain,
RFC 7208 2.4, then comes from the target through the alias), and the advisory DMARC record.
A target configured as an IP address becomes an A/AAAA record instead (a CNAME cannot point
at an address, RFC 1034 3.6.2). Those are stored ``[type, value]`` until first probed.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from relay.config import Settings

ADVISORY_PREFIX = "_dmarc."


def dkim_txt(public_key_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64}"


def target_record(target: str, *, fqdn: bool = False) -> list[Any]:
    """An alias to one of our hosts: CNAME to a name, A/AAAA to an address."""
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        return ["CNAME", target.rstrip(".") + "." if fqdn else target]
    return ["A" if address.version == 4 else "AAAA", str(address)]


def dmarc_txt(domain: str) -> str:
    return f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"


def subdomain_of(options: dict[str, Any], settings: Settings) -> str:
    return str(options.get("CustomSubdomain") or settings.dns.default_subdomain)


def tracking_host(domain: str, options: dict[str, Any], settings: Settings) -> str | None:
    if options.get("TrackPrefixDisabled"):
        return None
    prefix = options.get("CustomTrackPrefix") or settings.dns.default_track_prefix
    merge = options.get("TrackMerge") or settings.dns.default_track_merge
    return f"{prefix}{merge}{subdomain_of(options, settings)}.{domain}"


def build_records(
    domain: str,
    options: dict[str, Any],
    selector: str,
    public_key_b64: str,
    settings: Settings,
    previous: dict[str, list[Any]] | None = None,
) -> dict[str, list[Any]]:
    """The full record set; verified flags carry over from ``previous`` where a record is
    unchanged, and start False otherwise."""
    host = settings.hostname
    spf_include = settings.dns.spf_include or host
    bounce_target = settings.dns.return_path_target or host
    track_target = settings.dns.tracking_target or host
    records: dict[str, list[Any]] = {
        f"{selector}._domainkey.{domain}": ["TXT", dkim_txt(public_key_b64)],
        domain: ["TXT", f"v=spf1 include:{spf_include} ~all"],
        f"{subdomain_of(options, settings)}.{domain}": target_record(bounce_target),
    }
    track = tracking_host(domain, options, settings)
    if track is not None:
        records[track] = target_record(track_target)
    records[f"{ADVISORY_PREFIX}{domain}"] = ["TXT", dmarc_txt(domain)]
    previous = previous or {}
    for name, rec in records.items():
        old = previous.get(name)
        verified = bool(old[2]) if old and len(old) > 2 and old[:2] == rec[:2] else False
        rec.append(verified)
    return records


def sender_domain_records(
    domain: str, options: dict[str, Any], settings: Settings
) -> dict[str, list[Any]]:
    """The records of a user sender domain (seed 003), never probed: ``[type, value]``."""
    host = settings.hostname
    records: dict[str, list[Any]] = {
        f"{subdomain_of(options, settings)}.{domain}": target_record(
            settings.dns.return_path_target or host, fqdn=True
        )
    }
    track = tracking_host(domain, options, settings)
    if track is not None:
        records[track] = target_record(settings.dns.tracking_target or host, fqdn=True)
    records[f"{ADVISORY_PREFIX}{domain}"] = ["TXT", dmarc_txt(domain)]
    return records


def return_path_host(domain: str, options: dict[str, Any], settings: Settings) -> str:
    """The MAIL FROM (bounce) domain of a sender domain."""
    return f"{subdomain_of(options, settings)}.{domain}"


def same_records(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> bool:
    """Same hosts, types and values (verified flags aside)."""
    return {h: list(r[:2]) for h, r in a.items()} == {h: list(r[:2]) for h, r in b.items()}


def is_advisory(host: str) -> bool:
    return host.startswith(ADVISORY_PREFIX)
