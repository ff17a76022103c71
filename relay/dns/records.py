"""The DNS records a gateway domain's owner must publish.

- DKIM: ``<selector>._domainkey.<domain>`` TXT ``v=DKIM1; k=rsa; p=<public key>`` (RFC 6376 3.6.1)
- SPF: ``<domain>`` TXT ``v=spf1 include:<spf_include> ~all`` (RFC 7208)
- Return path: ``<subdomain>.<domain>`` CNAME to the bounce host (the MAIL FROM domain)
- Tracking: ``<prefix><merge><subdomain>.<domain>`` CNAME to the tracking host, unless disabled
- DMARC: ``_dmarc.<domain>`` TXT, advisory only: it never holds a domain back from Enabled.

Stored and returned as ``{host: [type, value, verified]}``.
"""

from __future__ import annotations

from typing import Any

from relay.config import Settings

ADVISORY_PREFIX = "_dmarc."


def dkim_txt(public_key_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64}"


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
        f"{subdomain_of(options, settings)}.{domain}": ["CNAME", bounce_target],
    }
    track = tracking_host(domain, options, settings)
    if track is not None:
        records[track] = ["CNAME", track_target]
    records[f"{ADVISORY_PREFIX}{domain}"] = [
        "TXT",
        f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}",
    ]
    previous = previous or {}
    for name, rec in records.items():
        old = previous.get(name)
        verified = bool(old[2]) if old and len(old) > 2 and old[:2] == rec[:2] else False
        rec.append(verified)
    return records


def is_advisory(host: str) -> bool:
    return host.startswith(ADVISORY_PREFIX)
