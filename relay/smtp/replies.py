"""Every SMTP reply the relay itself sends, with its enhanced status code (RFC 3463, RFC 2034).

Shared by the code and the tests, like aiosmtpd's ``testing/statuscodes.py``: tests compare
whole replies with these constants, so a wrong check whose reply shares a prefix with the right
one fails. The codes are part of the relay's interface (docs/smtp.md); the texts may change.

Also here: the one table from a policy refusal to its reply (``refusal``), and the enhanced
codes added to aiosmtpd's own replies (``enhanced``).
"""

from __future__ import annotations

import re

from relay.policy import Reason, Refused

# -- greeting, EHLO, AUTH ---------------------------------------------------------------------

EHLO_SIZE = "250-SIZE {size}"
EHLO_PIPELINING = "250-PIPELINING"  # RFC 2920
EHLO_ENHANCED_CODES = "250-ENHANCEDSTATUSCODES"  # RFC 2034
HELO_OK = "250 {hostname}"  # RFC 2034 3: no enhanced code on the HELO/EHLO response
EHLO_BAD = "501 5.5.4 Invalid EHLO/HELO hostname"

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_TOO_MANY = "421 4.7.0 Too many authentication failures, closing connection"
# Failures across connections (per client address or per username): AUTH is not even tried.
AUTH_THROTTLED = "421 4.7.0 Too many failed authentications, try again later"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Cannot split auth value"

# -- transaction ------------------------------------------------------------------------------

SENDER_OK = "250 2.1.0 Sender OK"
RCPT_OK = "250 2.1.5 Recipient OK"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
DATA_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
QUEUED = "250 2.0.0 Ok: queued as {id}"

# -- refusals (see REFUSALS) ------------------------------------------------------------------

SENDER_NOT_OWNED = "553 5.7.1 Sender address is not in a domain of your account"
SENDER_BAD_SYNTAX = "501 5.1.7 Bad sender address syntax"
DOMAIN_NOT_ENABLED = "550 5.7.1 Sender domain is not enabled for sending"
DOMAIN_DELETED = "550 5.7.1 Sender domain was deleted"
ACCOUNT_BLOCKED = "550 5.7.1 Account is not allowed to send"

RCPT_BAD_SYNTAX = "501 5.1.3 Bad recipient address syntax"
# RFC 6531 3.4 and 3.7.4.2: a non-ASCII address only in a transaction that declared SMTPUTF8.
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs MAIL FROM with SMTPUTF8"
RCPT_SUPPRESSED = "550 5.7.1 Recipient is on the suppression list"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
SEND_LIMIT = "452 4.5.3 Send limit of the account reached, try again later"

TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "554 5.6.0 Message has a line longer than {detail} octets (RFC 5322 2.1.1)"
FROM_COUNT = "550 5.7.1 Message must have exactly one From header"
FROM_DOMAIN = "550 5.7.1 From header address is not in the sender domain"
MALFORMED = "554 5.6.0 Malformed message: {detail}"

# -- connection and trouble -------------------------------------------------------------------

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle too long, closing connection"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached, please reconnect"
# The process's DATA memory is spent (RFC 3463 4.3.1 "mail system full"; RFC 1870 6.1 at MAIL).
DATA_NO_ROOM = "452 4.3.1 Insufficient system storage, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"

# -- emailgateway.smtprelay's SMTPResponse where no SMTP stage gives one ----------------------

RELAY_AUTH_ERROR = "500 5.0.0 AUTH ERROR"  # the documents' reply for invalid credentials
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
IN_PROGRESS = "451 4.3.0 A call with this UUID is still being queued, try again later"

# The policy's reasons, as SMTP replies. A refused AUTH is always AUTH_INVALID (RFC 4954 6:
# 535 is the reply to rejected credentials), whatever the reason.
REFUSALS: dict[Reason, str] = {
    Reason.CREDENTIAL_INVALID: AUTH_INVALID,
    Reason.USER_DELETED: ACCOUNT_BLOCKED,
    Reason.USER_DISABLED: ACCOUNT_BLOCKED,
    Reason.USER_NOT_VERIFIED: ACCOUNT_BLOCKED,
    Reason.DOMAIN_DELETED: DOMAIN_DELETED,
    Reason.DOMAIN_NOT_ENABLED: DOMAIN_NOT_ENABLED,
    Reason.SENDER_INVALID: SENDER_BAD_SYNTAX,
    Reason.SENDER_NOT_OWNED: SENDER_NOT_OWNED,
    Reason.RECIPIENT_INVALID: RCPT_BAD_SYNTAX,
    Reason.RECIPIENT_SUPPRESSED: RCPT_SUPPRESSED,
    Reason.TOO_MANY_RECIPIENTS: TOO_MANY_RCPTS,
    Reason.SEND_LIMIT: SEND_LIMIT,
    Reason.MESSAGE_TOO_BIG: TOO_BIG,
    Reason.MESSAGE_MALFORMED: MALFORMED,
    Reason.LINE_TOO_LONG: LINE_TOO_LONG,
    Reason.FROM_COUNT: FROM_COUNT,
    Reason.FROM_NOT_IN_DOMAIN: FROM_DOMAIN,
}
_WITH_DETAIL = frozenset(r for r, reply in REFUSALS.items() if "{detail}" in reply)


def refusal(exc: Refused) -> str:
    """The reply to a policy refusal."""
    reply = REFUSALS[exc.reason]
    return reply.format(detail=exc.detail) if exc.reason in _WITH_DETAIL else reply


# -- aiosmtpd's own replies -------------------------------------------------------------------

# A reply without an enhanced code after its basic code...
_NEEDS_ENHANCED = re.compile(r"^([245])(\d\d)([ -])(?!\d\.\d{1,3}\.\d{1,3}(?:\s|$))")
# ...gets the one its basic code calls for (RFC 3463): syntax and sequence errors are X.5.x.
ENHANCED_FOR = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.5.0", "421": "4.3.0", "450": "4.2.0",
    "451": "4.3.0", "452": "4.3.1", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4",
    "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "550": "5.7.1", "552": "5.3.4",
    "553": "5.1.3", "554": "5.7.0", "555": "5.5.4",
}  # fmt: skip


def _add_enhanced(m: re.Match[str]) -> str:
    basic = m[1] + m[2]
    return f"{basic}{m[3]}{ENHANCED_FOR.get(basic, m[1] + '.0.0')} "


def enhanced(reply: str) -> str:
    """``reply`` with an enhanced status code (RFC 2034 3: every reply but the greeting and
    the EHLO/HELO response carries one); aiosmtpd's own replies often lack it."""
    return _NEEDS_ENHANCED.sub(_add_enhanced, reply, count=1)
