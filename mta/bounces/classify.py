"""Bounce categories: why a recipient's mail failed, in PowerMTA's vocabulary (``bounceCat``),
so bounces from the MX listener and from PowerMTA accounting records read the same.

The RFC 3463 enhanced status code decides where it is specific; the diagnostic text decides
where the code is generic (X.0.0, 5.5.0, 5.7.1 for everything) or absent, and for the causes
no code names (spam blocks are usually 5.7.1, sometimes even 5.1.1). The phrase lists hold the
wordings the big receivers (Gmail, Microsoft, Yahoo, Postfix, Exim, qmail, Exchange) use.

A hard bounce, one that puts the recipient on the suppression list, is a permanent failure
(not 4.X.X) in ``HARD``: the mailbox or domain does not exist or is disabled. Quota, spam,
policy and the rest say nothing lasting about the address.
"""

from __future__ import annotations

import re

BAD_MAILBOX = "bad-mailbox"
BAD_DOMAIN = "bad-domain"
INACTIVE_MAILBOX = "inactive-mailbox"
QUOTA = "quota-issues"
SPAM = "spam-related"
POLICY = "policy-related"
VIRUS = "virus-related"
CONTENT = "content-related"
EXPIRED = "message-expired"
NO_ANSWER = "no-answer-from-host"
BAD_CONNECTION = "bad-connection"
ROUTING = "routing-errors"
PROTOCOL = "protocol-errors"
RELAYING = "relaying-issues"
INVALID_SENDER = "invalid-sender"
OTHER = "other"

HARD = frozenset({BAD_MAILBOX, BAD_DOMAIN, INACTIVE_MAILBOX})


def _words(*phrases: str) -> re.Pattern[str]:
    return re.compile("|".join(phrases), re.IGNORECASE)


# Checked before the status code: these causes hide behind generic or misleading codes.
_BEFORE_CODE: tuple[tuple[str, re.Pattern[str]], ...] = (
    (VIRUS, _words(r"\bvirus", r"\bmalware", r"infected")),
    (
        SPAM,
        _words(
            r"\bspam",
            r"black ?list",
            r"block ?list",
            r"\bdnsbl\b",
            r"\brbl\b",
            r"spamhaus",
            r"spamcop",
            r"barracuda",
            r"reputation",
            r"listed (?:at|on|in)\b",
            r"\bjunk\b",
            r"unsolicited",
            r"bulk mail",
        ),
    ),
    (
        INACTIVE_MAILBOX,
        _words(
            r"account (?:is |has been )?(?:disabled|inactive|suspended|deactivated|locked|"
            r"closed|expired)",
            r"mailbox (?:is |has been )?(?:disabled|inactive|suspended|deactivated|frozen)",
            r"(?:is|was) (?:disabled|inactive|deactivated|suspended)\b",
            r"no longer (?:active|in use|available)",
            r"user (?:is )?(?:disabled|inactive|suspended|deactivated)",
        ),
    ),
    (
        QUOTA,
        _words(
            r"quota",
            r"mailbox (?:is )?full",
            r"mail ?box full",
            r"inbox (?:is )?full",
            r"insufficient (?:storage|space|system storage)",
            r"exceeded (?:the )?(?:storage|size limit|mailbox size)",
            r"storage (?:limit|allocation) exceeded",
            r"over ?quota",
            r"out of storage",
        ),
    ),
)

# By enhanced status code: (subject, detail or None for any) -> category.
_BY_CODE: tuple[tuple[tuple[int, int | None], str], ...] = (
    ((1, 1), BAD_MAILBOX),
    ((1, 10), BAD_MAILBOX),  # Microsoft: RESOLVER.ADR.RecipientNotFound
    ((1, 6), BAD_MAILBOX),  # mailbox has moved, no forwarding address
    ((1, 3), BAD_MAILBOX),  # bad destination mailbox address syntax
    ((1, 2), BAD_DOMAIN),
    ((4, 4), BAD_DOMAIN),  # unable to route: no MX, no A
    ((1, 7), INVALID_SENDER),
    ((1, 8), INVALID_SENDER),
    ((2, 1), INACTIVE_MAILBOX),
    ((2, 2), QUOTA),
    ((2, 3), CONTENT),  # message length exceeds administrative limit
    ((3, 4), CONTENT),  # message too big for system
    ((4, 7), EXPIRED),
    ((4, 1), NO_ANSWER),
    ((4, 2), BAD_CONNECTION),
    ((4, 3), ROUTING),
    ((4, 6), ROUTING),  # routing loop
    ((6, None), CONTENT),
    ((7, 26), POLICY),  # authentication (DMARC) failure
)

_RELAYING = _words(
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited)", r"not permitted to relay"
)

# Checked after the status code, for generic codes and bare text.
_AFTER_CODE: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        BAD_MAILBOX,
        _words(
            r"user unknown",
            r"unknown (?:user|recipient|mailbox|address)",
            r"no such (?:user|mailbox|recipient|address|person)",
            r"(?:user|mailbox|recipient|address|account)(?: name)? (?:does not|doesn't) exist",
            r"(?:user|mailbox|recipient|address) (?:not found|unknown|invalid)",
            r"recipient ?not ?found",
            r"invalid (?:recipient|mailbox|address|user)",
            r"mailbox unavailable",
            r"mailbox not (?:found|available)",
            r"not a valid (?:mailbox|recipient|user|address)",
            r"address (?:unknown|not present)",
            r"email account that you tried to reach does not exist",
            r"no mailbox",
        ),
    ),
    (
        BAD_DOMAIN,
        _words(
            r"host or domain name not found",
            r"domain (?:not found|does not exist|doesn't exist|unknown|name not found)",
            r"no (?:mx|mail exchanger|valid mx)",
            r"unrouteable (?:address|domain)",
            r"name service error",
            r"nxdomain",
            r"host (?:not found|unknown)",
        ),
    ),
    (EXPIRED, _words(r"expired", r"retry timeout exceeded", r"too long in (?:the )?queue")),
    (
        NO_ANSWER,
        _words(
            r"connection (?:timed out|refused)",
            r"did not accept our requests to connect",
            r"no answer",
            r"could not connect",
        ),
    ),
    (
        POLICY,
        _words(
            r"policy",
            r"not authori[sz]ed",
            r"\bdmarc\b",
            r"\bspf\b",
            r"\bdkim\b",
            r"authentication",
            r"rejected",
            r"denied",
            r"refused",
            r"blocked",
        ),
    ),
)

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def parse_status(text: str) -> tuple[int, int, int] | None:
    found = _ENHANCED.search(text or "")
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def categorize(status: str, diagnostic: str, text: str = "") -> str:
    """The category of a failure from its status (``5.1.1``), the remote diagnostic and,
    when those say too little, the report's human-readable text."""
    code = parse_status(status) or parse_status(diagnostic)
    words = diagnostic or text
    for category, pattern in _BEFORE_CODE:
        if pattern.search(words):
            return category
    if code is not None:
        _cls, subject, detail = code
        for (want_subject, want_detail), category in _BY_CODE:
            if want_subject == subject and want_detail in (None, detail):
                return category
        if subject == 7:
            return RELAYING if _RELAYING.search(words) else POLICY
        if subject == 5 and detail != 0:
            return PROTOCOL
    for source in (words, text):
        for category, pattern in _AFTER_CODE:
            if source and pattern.search(source):
                return category
    return OTHER


def is_hard(category: str, status: str) -> bool:
    """A permanent failure that says the address is gone: suppress it."""
    code = parse_status(status)
    return category in HARD and (code is None or code[0] == 5)
