"""Who is asking: a person, or a machine fetching on their behalf (docs/tracking.md, "Machines").

Security gateways follow every link of a message as it arrives, link previewers fetch them
when a URL is pasted, mail clients and proxies prefetch images. Their hits are recorded like
any other, with ``data.machine = true`` and ``data.machine_reason``, so statistics can count
people. The rule, first match wins:

- ``head``: a HEAD request (browsers following a link or loading an image send GET);
- ``no-user-agent``: no User-Agent header at all;
- ``user-agent``: the User-Agent contains one of ``tracking.machine_user_agents``;
- ``early``: the hit came less than ``tracking.machine_seconds`` after the message was
  accepted, or for a scheduled message its SendAt (the token's time), sooner than a person
  opens a message that just arrived.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from relay.config import TrackingSettings


class MachineRule:
    def __init__(self, settings: TrackingSettings) -> None:
        self.agents = tuple(a.lower() for a in settings.machine_user_agents if a)
        self.seconds = settings.machine_seconds

    def reason(self, method: str, user_agent: str, minted_at: int, now: float) -> str | None:
        if method == "HEAD":
            return "head"
        if not user_agent.strip():
            return "no-user-agent"
        ua = user_agent.lower()
        if any(a in ua for a in self.agents):
            return "user-agent"
        if self.seconds and now - minted_at < self.seconds:
            return "early"
        return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(n, strict=False) for n in items]


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the last
    X-Forwarded-For entry that is not one of ours (entries before it are the client's word)."""
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
