"""Every reply the relay itself decides, with its enhanced status code (RFC 3463, RFC 2034).

Shared by the code and the tests (like aiosmtpd's testing/statuscodes.py). The codes are fixed
by CONTRACT.md; the texts may change.
"""

from __future__ import annotations

QUEUED = "250 2.0.0 Ok: queued as {id}"
AUTH_OK = "235 2.7.0 Authentication successful"

AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_TOO_MANY = "421 4.7.0 Too many authentication failures, closing connection"

SENDER_NOT_OWNED = "553 5.7.1 Sender address is not in a domain of your account"
SENDER_BAD_SYNTAX = "501 5.1.7 Bad sender address syntax"
DOMAIN_NOT_ENABLED = "550 5.7.1 Sender domain is not enabled for sending"
ACCOUNT_BLOCKED = "550 5.7.1 Account is not allowed to send"

RCPT_BAD_SYNTAX = "501 5.1.3 Bad recipient address syntax"
RCPT_SUPPRESSED = "550 5.7.1 Recipient is on the suppression list"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
SEND_LIMIT = "452 4.5.3 Send limit of the account reached, try again later"

TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "554 5.6.0 Message has a line longer than {limit} octets (RFC 5322 2.1.1)"
FROM_COUNT = "550 5.7.1 Message must have exactly one From header"
FROM_DOMAIN = "550 5.7.1 From header address is not in the sender domain"
MALFORMED = "554 5.6.0 Malformed message: {why}"

EHLO_BAD = "501 5.5.4 Invalid EHLO/HELO hostname"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
