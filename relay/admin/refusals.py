"""How the HTTP front ends answer a policy refusal (``relay.policy.Refused``): one table each.

- ``SEND_EMAIL``: ``/api/v1/email`` (emailgateway.sendemail.public): the documents' error code,
  its message and the v1 HTTP status.
- ``SMTP_RELAY``: ``emailgateway.smtprelay``: the documents' error code, its text, and the
  ``SMTPResponse``: the reply the relay's SMTP side gives for the same reason
  (``relay.smtp.replies.refusal``) unless the documents fix another one.

A text may name ``{detail}`` (the refusal's detail: an address, a limit) or ``{reply}`` (the
SMTP reply for the reason). Every reason has a row in each table (tests check).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from relay.admin.errors import ApiError
from relay.policy import Reason, Refused
from relay.smtp import replies

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class SendAnswer(NamedTuple):
    code: int
    text: str
    status: int


class RelayAnswer(NamedTuple):
    code: int
    text: str
    smtp_response: str | None = None  # None: the SMTP side's reply for the reason


_ACCOUNT = "Invalid DomainID or invalid user account"
_REFUSED_CONTENT = SendAnswer(41, "Message refused: {reply}", 422)  # not in the documents

SEND_EMAIL: dict[Reason, SendAnswer] = {
    Reason.CREDENTIAL_INVALID: SendAnswer(13, "Invalid SenderAPIKey", 401),
    Reason.USER_DELETED: SendAnswer(2, _ACCOUNT, 403),
    Reason.USER_DISABLED: SendAnswer(12, "Invalid or deactivated user account", 403),
    Reason.USER_NOT_VERIFIED: SendAnswer(34, "User account is not verified", 403),
    Reason.DOMAIN_DELETED: SendAnswer(2, _ACCOUNT, 403),
    Reason.DOMAIN_NOT_ENABLED: SendAnswer(32, "Domain is not activated", 403),
    Reason.SENDER_INVALID: SendAnswer(23, "Invalid from email address format", 400),
    Reason.SENDER_NOT_OWNED: SendAnswer(
        3, "From email address must be in the sender domain {detail}", 400
    ),
    Reason.RECIPIENT_INVALID: SendAnswer(19, "Recipient email address is invalid.", 400),
    Reason.RECIPIENT_SUPPRESSED: SendAnswer(
        14, "Email address is in the suppression list. Email delivery is blocked: {detail}", 422
    ),
    Reason.TOO_MANY_RECIPIENTS: SendAnswer(
        20, "Recipient count exceeds the limit of {detail}", 400
    ),
    Reason.SEND_LIMIT: SendAnswer(17, "Email sending limit reached", 429),
    Reason.MESSAGE_TOO_BIG: _REFUSED_CONTENT,
    Reason.MESSAGE_MALFORMED: _REFUSED_CONTENT,
    Reason.LINE_TOO_LONG: _REFUSED_CONTENT,
    Reason.FROM_COUNT: _REFUSED_CONTENT,
    Reason.FROM_NOT_IN_DOMAIN: _REFUSED_CONTENT,
}

_SENDER_DOMAIN = "Invalid sender domain"
_NOT_ALLOWED = "User is not trusted or not enabled"
_REFUSED = "Message refused"  # 9: not in the documents

SMTP_RELAY: dict[Reason, RelayAnswer] = {
    Reason.CREDENTIAL_INVALID: RelayAnswer(3, "Invalid SMTP credentials", replies.RELAY_AUTH_ERROR),
    Reason.USER_DELETED: RelayAnswer(6, "Invalid user account"),
    Reason.USER_DISABLED: RelayAnswer(7, _NOT_ALLOWED),
    Reason.USER_NOT_VERIFIED: RelayAnswer(7, _NOT_ALLOWED),
    Reason.DOMAIN_DELETED: RelayAnswer(4, _SENDER_DOMAIN),
    Reason.DOMAIN_NOT_ENABLED: RelayAnswer(5, "Sender domain is not active"),
    Reason.SENDER_INVALID: RelayAnswer(4, _SENDER_DOMAIN),
    Reason.SENDER_NOT_OWNED: RelayAnswer(4, _SENDER_DOMAIN),
    Reason.RECIPIENT_INVALID: RelayAnswer(9, "Invalid recipient {detail}"),
    Reason.RECIPIENT_SUPPRESSED: RelayAnswer(8, "Recipient email address is suppressed"),
    Reason.TOO_MANY_RECIPIENTS: RelayAnswer(9, "Too many recipients (at most {detail})"),
    Reason.SEND_LIMIT: RelayAnswer(9, "Send limit of the account reached"),
    Reason.MESSAGE_TOO_BIG: RelayAnswer(9, _REFUSED),
    Reason.MESSAGE_MALFORMED: RelayAnswer(9, _REFUSED),
    Reason.LINE_TOO_LONG: RelayAnswer(9, _REFUSED),
    Reason.FROM_COUNT: RelayAnswer(9, _REFUSED),
    Reason.FROM_NOT_IN_DOMAIN: RelayAnswer(9, _REFUSED),
}


def _text(template: str, exc: Refused) -> str:
    if "{" not in template:
        return template
    reply = replies.refusal(exc) if "{reply}" in template else ""
    # The detail may be an address the client sent: no control characters in the answer.
    return template.format(detail=_CONTROL.sub(" ", exc.detail).strip(), reply=reply)


def send_problem(exc: Refused) -> tuple[int, str]:
    """(code, message) of the send API, for a list of problems."""
    answer = SEND_EMAIL[exc.reason]
    return answer.code, _text(answer.text, exc)


def send_error(exc: Refused) -> ApiError:
    """The send API's error for a refusal (v1 shape, with its HTTP status)."""
    answer = SEND_EMAIL[exc.reason]
    return ApiError(answer.code, _text(answer.text, exc), status=answer.status)


def relay_error(exc: Refused) -> ApiError:
    """emailgateway.smtprelay's error for a refusal: code, ErrorText and SMTPResponse."""
    answer = SMTP_RELAY[exc.reason]
    reply = answer.smtp_response or replies.refusal(exc)
    return ApiError(answer.code, _text(answer.text, exc), extra={"SMTPResponse": reply})
