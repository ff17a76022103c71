"""Email address and domain syntax, shared by the SMTP checks and the API validation.

Domains are kept and compared in their ASCII form: internationalized names (U-labels, e.g.
``bücher.example``) become A-labels (``xn--bcher-kva.example``) with IDNA 2008 and the UTS #46
mapping (the ``idna`` package). Python's own ``idna`` codec implements IDNA 2003, which maps
some characters to others (``ß`` to ``ss``) and would name a different domain.
"""

from __future__ import annotations

import re

import idna

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(?:{_LABEL}\.)+(?!\d+$)(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}})$")
# RFC 5321 4.1.2 dot-atom local part; quoted local parts are rare in submission and refused.
_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
# RFC 6531 3.3: with SMTPUTF8, atext also takes UTF8-non-ascii (any non-ASCII character; never
# a lone surrogate, which is what bytes that are not UTF-8 decode to).
_UTF8_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\ud7ff\ue000-\U0010ffff"
_LOCAL_UTF8_RE = re.compile(rf"^[{_UTF8_ATEXT}]+(?:\.[{_UTF8_ATEXT}]+)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SUBLABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,32}(?<!-)$")


def has_control_chars(value: str) -> bool:
    """CR, LF, NUL or any other control character: never allowed in an address or name."""
    return bool(_CONTROL.search(value))


def is_valid_domain(name: str) -> bool:
    return len(name) <= 253 and bool(_DOMAIN_RE.match(name))


def ascii_domain(name: str) -> str | None:
    """``name`` in its ASCII form (A-labels, lower case), or None if it is not a valid domain
    name. ASCII input is only lower-cased and checked."""
    if len(name) > 1024:
        return None  # no name; and the mapping's cost grows with the input
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    name = name.lower()
    return name if is_valid_domain(name) else None


def ascii_address(address: str) -> str:
    """``address`` with its domain in ASCII form when that domain is an internationalized
    name (the local part is left alone); unchanged otherwise, for validation to judge."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    converted = ascii_domain(domain)
    return f"{local}@{converted}" if converted else address


def is_valid_email(address: str) -> bool:
    # RFC 5321 4.5.3.1: local part up to 64 octets, path up to 256.
    if len(address) > 254 or has_control_chars(address):
        return False
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > 64:
        return False
    return bool(_LOCAL_RE.match(local)) and is_valid_domain(domain)


def is_valid_utf8_email(address: str) -> bool:
    """An internationalized address (RFC 6531 3.3), for a transaction that declared SMTPUTF8:
    a UTF-8 local part, a domain of A-labels or U-labels; the limits count octets."""
    if address.isascii():
        return is_valid_email(address)
    if has_control_chars(address):
        return False
    local, at, domain = address.rpartition("@")
    try:
        local_octets = len(local.encode())
        total = local_octets + 1 + len(domain.encode())
    except UnicodeEncodeError:  # a lone surrogate: the client's bytes were not UTF-8
        return False
    if not at or not local or local_octets > 64 or total > 254:
        return False
    return bool(_LOCAL_UTF8_RE.match(local)) and ascii_domain(domain) is not None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def is_same_or_subdomain(child: str, parent: str) -> bool:
    child, parent = child.lower().rstrip("."), parent.lower().rstrip(".")
    return child == parent or child.endswith("." + parent)


def is_valid_sublabel(value: str) -> bool:
    """Subdomain / track prefix overrides: letters, digits, hyphens; 1-32; no edge hyphens."""
    return bool(_SUBLABEL.match(value))
