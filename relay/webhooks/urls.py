"""Which webhook URLs may be stored: the configuration-time half of the SSRF defence.

001 (emailgateway.addwebhook): the scheme must be http or https and the host cannot be
localhost, 127.0.0.1, ::1 or end in .local. A literal check on the text is easy to dodge, so
the host is first brought to the one form an HTTP client would connect to, the way the WHATWG
URL standard parses it (https://url.spec.whatwg.org/#host-parsing):

- percent-decoding (``%31%32%37.0.0.1``), IDNA mapping of non-ASCII (fullwidth digits and dots),
  lower case, trailing dots dropped (``LOCALHOST.``);
- a host whose last label is a number is an IPv4 address in any of the inet_aton notations:
  ``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1`` (and is invalid if that fails to parse);
- the host after any userinfo (``http://a@127.0.0.1``); a backslash anywhere is refused because
  parsers disagree on whether it ends the authority.

Then refused (``Forbidden``): localhost names, ``*.local``, ``*.localdomain``, ``*.internal``,
single-label names (they resolve through search domains to internal hosts), and every address
that is not globally routable: loopback, private, link-local, unspecified, CGNAT (100.64/10),
multicast, reserved and documentation ranges, unique-local and site-local IPv6, IPv4-mapped and
IPv4-compatible IPv6, and 6to4/NAT64 addresses embedding a refused IPv4 address.

A name that *resolves* to such an address (DNS rebinding) cannot be judged here: the delivery
side checks the address it actually connects to (relay/webhooks/resolver.py), with
``is_refused``, and reads the URL's host with ``target_host``, the same unwrapping as here.

``webhooks.allow_networks`` exempts the operator's own networks: an address inside one of them
is allowed at save time (an IP literal) and at send time (a literal or a resolved address).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

MAX_URL_LENGTH = 2048

_FORBIDDEN_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_FORBIDDEN_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal")
_NUMBER_LABEL = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")
# What is left for a DNS name once IP literals are out (underscores occur in real names).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")

_FORBIDDEN_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
]
_FORBIDDEN_V6 = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback, IPv4-compatible (deprecated, RFC 4291 2.5.5.1)
        "::ffff:0:0/96",  # IPv4-mapped
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(Exception):
    """``forbidden`` False: not a valid http(s) URL (code 6); True: forbidden host (code 7)."""

    def __init__(self, reason: str, *, forbidden: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.forbidden = forbidden


def _invalid(reason: str) -> UrlRefused:
    return UrlRefused(reason, forbidden=False)


def _forbidden(reason: str) -> UrlRefused:
    return UrlRefused(reason, forbidden=True)


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG IPv4 parser: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x).

    Returns None if the host is not meant as an IPv4 address (its last label is not a number);
    raises UrlRefused if it is meant as one but is not valid.
    """
    parts = host.split(".")
    if not _NUMBER_LABEL.match(parts[-1]):
        return None
    if len(parts) > 4:
        raise _invalid("malformed IPv4 address")
    numbers = []
    for part in parts:
        if not part:
            raise _invalid("malformed IPv4 address")
        if part[:2].lower() == "0x":
            digits, base = part[2:] or "0", 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        try:
            numbers.append(int(digits, base))
        except ValueError:
            raise _invalid("malformed IPv4 address") from None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise _invalid("IPv4 address out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_networks(values: list[str]) -> tuple[Network, ...]:
    """``webhooks.allow_networks`` as networks (validated by the configuration already)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def is_allowed(ip: Address, allow: tuple[Network, ...]) -> bool:
    """Inside one of the operator's exempt networks (an IPv4-mapped address counts as its
    IPv4 address)."""
    if not allow:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in net or (mapped is not None and mapped in net) for net in allow)


def is_refused(ip: Address, allow: tuple[Network, ...] = ()) -> bool:
    """True if a webhook may not reach ``ip``: forbidden and not exempt."""
    return is_forbidden_address(ip) and not is_allowed(ip, allow)


def is_forbidden_address(ip: Address) -> bool:
    """True for any address a webhook must never reach (see the module docstring)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
            return True
        if any(ip in net for net in _FORBIDDEN_V6):
            return True
        return not ip.is_global
    if any(ip in net for net in _FORBIDDEN_V4):
        return True
    return not ip.is_global or ip.is_multicast


def normalize_host(raw: str) -> str:
    """The host as a client would use it: percent-decoded, IDNA-mapped, lower case, no
    trailing dot. Raises UrlRefused (invalid) if no valid host remains."""
    host = unquote(raw, errors="strict") if "%" in raw else raw
    if "%" in host:
        raise _invalid("invalid character in host")
    if not host.isascii():
        try:
            # Python's "idna" codec (IDNA 2003 + nameprep) maps fullwidth digits, dots and
            # letters to ASCII: exactly the tricks that would otherwise slip past the checks.
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid("invalid international host name") from None
    host = host.lower().rstrip(".")
    if not host:
        raise _invalid("empty host")
    return host


def check_webhook_url(url: str, allow: tuple[Network, ...] = ()) -> str:
    """Return the URL (stripped) if it may be stored; raise UrlRefused otherwise. An IP literal
    inside ``allow`` (``webhooks.allow_networks``) is accepted."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise _invalid("URL missing or too long")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise _invalid("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("malformed URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _invalid("scheme must be http or https")
    if not parts.netloc:
        raise _invalid("URL has no host")
    if port == 0:
        raise _invalid("invalid port")
    # urlsplit takes the host after the last "@" as browsers do; the userinfo is ignored.
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        literal, _, _rest = hostport[1:].partition("]")
        try:
            ip6 = ipaddress.IPv6Address(unquote(literal))
        except ValueError:
            raise _invalid("malformed IPv6 address") from None
        if is_refused(ip6, allow):
            raise _forbidden("address is not publicly routable")
        return url
    host = normalize_host(hostport.rpartition(":")[0] if ":" in hostport else hostport)
    if ":" in host:
        raise _invalid("IPv6 addresses must be in brackets")
    ip4 = parse_ipv4(host)
    if ip4 is not None:
        if is_refused(ip4, allow):
            raise _forbidden("address is not publicly routable")
        return url
    if len(host) > 253 or not _NAME.match(host):
        raise _invalid("malformed host name")
    if host in _FORBIDDEN_NAMES or host.endswith(_FORBIDDEN_SUFFIXES) or host == "local":
        raise _forbidden("local host name")
    if "." not in host:
        raise _forbidden("single-label host names resolve to internal hosts")
    return url


def target_host(url: str) -> tuple[str, Address | None]:
    """Send time: the host an HTTP client connects to, read like ``check_webhook_url`` reads it.

    Returns ``(host, address)``: ``address`` is the IP when the host is a literal in any
    notation (``0x7f.1`` is 127.0.0.1), ``host`` then its canonical text (bracketed for IPv6)
    for the request URL; otherwise ``(name, None)``, the name to resolve. Raises UrlRefused if
    the stored URL no longer parses.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _invalid("malformed URL") from None
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        literal = hostport[1:].partition("]")[0]
        try:
            ip6 = ipaddress.IPv6Address(unquote(literal))
        except ValueError:
            raise _invalid("malformed IPv6 address") from None
        return f"[{ip6.compressed}]", ip6
    host = normalize_host(hostport.rpartition(":")[0] if ":" in hostport else hostport)
    ip4 = parse_ipv4(host)
    if ip4 is not None:
        return str(ip4), ip4
    return host, None
