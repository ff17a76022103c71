"""Which host the tracking URLs of a message use (docs/tracking.md, "Which host").

1. The sender domain's tracking host, ``<TrackPrefix><TrackMerge><Subdomain>.<domain>``
   (the tracking CNAME of its DNS records), once verification found it published;
2. with TrackPrefixDisabled, the domain's return-path host ``<Subdomain>.<domain>``, once
   verified;
3. otherwise ``tracking.host``, a name of the operator's that reaches the tracking listener;
4. otherwise none: the message is not tracked (a link to a name that does not resolve would
   break the customer's mail).

A delivery server's DomainSettings_LinkTracking / DomainSettings_OpenTracking never appear in
messages: the URLs are written, and signed, when the message is accepted, before routing picks
a delivery server (and a failover may pick another).
"""

from __future__ import annotations

from relay.config import Settings
from relay.directory import DomainView
from relay.dns.records import return_path_host, tracking_host


def domain_host(domain: DomainView, settings: Settings) -> str:
    """The domain's own tracking host (rules 1 and 2), verified or not."""
    return tracking_host(domain.name, domain.options, settings) or return_path_host(
        domain.name, domain.options, settings
    )


def tracking_base(domain: DomainView, settings: Settings) -> str | None:
    """``scheme://host`` for this domain's tracking URLs, or None when there is no usable host."""
    own = domain_host(domain, settings)
    host = own if own.lower() in domain.verified_hosts else settings.tracking.host
    if not host:
        return None
    return f"{settings.tracking.scheme}://{host.lower()}"
