"""The domain lists PowerMTA includes: one builder for ``sender.domains`` (its
``powermta-relay-domains`` and ``powermta-bounce-domains`` formats) and ``relay pmta-sync``,
so both always say the same thing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.config import Settings
from relay.dns.records import return_path_host


@dataclass(frozen=True, slots=True)
class DomainLists:
    relay: list[str]  # "relay-domain <name>": sender domains and their return-path hosts
    bounce: list[str]  # "domain <return-path host>": for <bounce-processor><address-list>


def domain_lists(enabled: Iterable[Any], settings: Settings) -> DomainLists:
    """``enabled``: rows with ``name`` and ``options`` of the Enabled sender domains."""
    rows = list(enabled)
    names = {row.name for row in rows}
    bounce_hosts = sorted({return_path_host(r.name, r.options or {}, settings) for r in rows})
    relay = sorted(names | set(bounce_hosts))
    return DomainLists(
        relay=[f"relay-domain {name}" for name in relay],
        bounce=[f"domain {host}" for host in bounce_hosts],
    )


def render(lines: list[str], what: str, at: float | None = None) -> str:
    """The file: a comment line (what, how many, when), then one line per entry."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return "\n".join([f"# {what}: {len(lines)} entries, {stamp}", *lines]) + "\n"


def entries(text: str) -> list[str]:
    """The entry lines of a rendered file (its comments aside), to compare two versions."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
