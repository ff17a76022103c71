"""Sending over HTTP (001: POST /api/v1/email) and the SMTP relay contract
(emailgateway.smtprelay).

``/api/v1/email`` builds a MIME message from the JSON fields (UTF-8 text as quoted-printable,
attachments base64, inline images with a Content-ID next to the HTML), then takes exactly the
path an SMTP submission takes: the same sending policy (account and domain status,
suppression, recipient cap, send limit, content checks; docs/smtp.md), Message-ID and Date
when missing, a Received header, the DKIM signature of the sender domain, and the group commit;
it answers only once the message is durably queued. The From address must be in the key's
sender domain (or a subdomain of it); it is also the envelope sender. Recipients are To, CC and
BCC (BCC only in the envelope), at most ``smtp.max_recipients`` in all.

``SendAt`` schedules the message, at most 72 hours ahead: it is checked, signed and committed
at once (the answer, its ``accepted`` events and any refusal come now, and the send limit
counts it now), and its recipients become due at SendAt: the delivery workers take them at
that time (within about a second), on any node, across restarts (the time is stored with the
message). Until then the queue shows them as ``scheduled`` (``queue.list``, ``relay queue
list``; ``emailgateway.getmessage`` gives ``ScheduledAt``), and an operator can cancel them
(``queue.delete``). A SendAt of 0, or up to 10 minutes in the past (clock skew), means now.

Not in the documents, and numbered after their last code: 39 an attachment without a filename
or whose content is not base64; 40 a custom header with an invalid name, a line break in its
value, or a name the relay sets itself (From, To, Cc, Bcc, Subject, Reply-To, Sender, Received,
Return-Path, DKIM-Signature, MIME-Version, Content-*); 41 a message the content checks refuse
(too large, over-long lines); 42 SendAt not a Unix time (a whole number of seconds); 43 SendAt
more than 10 minutes in the past or more than 72 hours ahead. There are no templates, lists,
subscribers or journeys here, so TemplateID, TargetListID, ListID, SubscriberID, JourneyID and
ActionID never name anything that exists (codes 15, 16, 35-38).
TrackLinks and TrackOpens override the sender domain's LinkTracking and OpenTracking for the
message (docs/tracking.md); 44 is either of them not true or false.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiohttp import web

from relay import policy
from relay.admin.compose import build_mime, clean_text, parse_email
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import INTERNAL_ERROR, ApiError, storage_unavailable
from relay.admin.idempotency import InProgress, key_of
from relay.admin.refusals import relay_error, send_error
from relay.admin.resources import IDEMPOTENCY
from relay.admin.senderkey import sender_scope
from relay.message import encoded_header, from_addresses
from relay.ratelimit import Reservation
from relay.smtp import replies
from relay.submit import Origin, Submitter

SUBMITTER = web.AppKey("submitter", Submitter)
MAX_SUBJECT = 998  # smtprelay's Subject: one header line's worth (RFC 5322 2.1.1)
log = structlog.get_logger("relay.admin.send")


def _submitter(call: Call) -> Submitter:
    submitter = call.request.app.get(SUBMITTER)
    if submitter is None:
        raise ApiError(
            INTERNAL_ERROR,
            "This node does not accept mail (no SMTP submission service is running)",
            status=503,
        )
    return submitter


@command(
    "emailgateway.sendemail.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("POST", "/api/v1/email"),),
    missing_key=1,
)
async def send_email(call: Call) -> dict[str, Any]:
    """Send one email from the API key's sender domain; answers with its MessageID once it is
    queued (signed and durably stored, like a 250 over SMTP).

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.
        Subject (String, required): subject line.
        ContentType (String, required): html or plain.
        HTMLContent (String, conditional): required when ContentType is html.
        PlainContent (String, conditional): required when ContentType is plain; with html, the
            plain-text alternative.
        From (Object, required): {"name", "email"}; the email must be in the sender domain.
        To (Array, required): [{"name", "email"}].
        CC (Array): [{"name", "email"}].
        BCC (Array): [{"name", "email"}], envelope only.
        ReplyTo (Array): [{"name", "email"}], at most 10.
        Tags (Array): strings, for per-tag statistics (domainstats TagStats).
        Headers (Object): custom headers, name: value.
        TrackLinks (String): true or false: rewrite the HTML links to click-tracking URLs;
            overrides the sender domain's LinkTracking for this message.
        TrackOpens (String): true or false: add the open-tracking image to the HTML;
            overrides the sender domain's OpenTracking for this message.
        SendAt (Integer): when to send (Unix time, seconds), at most 72 hours ahead; absent,
            0 or up to 10 minutes in the past: now.
        Attachments (Array): [{"filename", "content" (base64), "type", "disposition",
            "contentid"}]; inline with a contentid goes next to the HTML.
        TemplateID (Integer): no templates exist here.
        TargetListID (Integer): no lists exist here.
        ListID, SubscriberID, JourneyID, ActionID (Integer): none exist here.

    Errors:
        1: Missing SenderAPIKey
        2: Invalid DomainID or invalid user account
        3: From parameter is missing or invalid
        8: Missing Subject or To email address
        9: Missing ContentType
        10: Missing HTMLContent
        11: Missing PlainContent
        12: Invalid or deactivated user account
        13: Invalid SenderAPIKey
        14: Email address is in the suppression list
        15: Invalid TemplateID
        16: Invalid TargetListID
        17: Email sending limit reached
        18: Recipient name or email address is missing
        19: Recipient email address is invalid
        20: There is no recipient set or count exceeds limit
        21: CC name or email address is missing
        22: CC email address is invalid
        23: Invalid from email address format
        24: BCC email addresses must be set as an array
        25: BCC name or email address is missing
        26: BCC email address is invalid
        27: BCC count exceeds limit
        28: Reply-To email addresses must be set as an array
        29: Reply-To name or email address is missing
        30: Reply-To email address is invalid
        31: Reply-To count exceeds limit
        32: Domain is not activated
        34: User account is not verified
        35: Invalid ListID
        36: Invalid SubscriberID
        37: Invalid JourneyID
        38: Invalid ActionID
        39: Invalid attachment (not in the documents)
        40: Invalid custom header (not in the documents)
        41: Message refused by the content checks (not in the documents)
        42: SendAt is not a Unix time (not in the documents)
        43: SendAt more than 10 minutes in the past or more than 72 hours ahead (not in the
            documents)
        44: TrackLinks or TrackOpens is not true or false (not in the documents)
        429: Email send rate limit exceeded
    """
    scope = await sender_scope(
        call,
        ApiError(2, "Invalid DomainID or invalid user account", status=403),
        enabled_only=False,
    )
    user, domain = scope.user, scope.domain
    services = call.services
    held: Reservation | None = None
    try:
        policy.check_account(user, domain)
        mail = parse_email(call.params, services.settings, domain.name)
        recipients = mail.recipients
        held = await policy.check_recipients(
            services.directory, services.limiter, services.settings, user, recipients
        )
        submitter = _submitter(call)
        _data, message = await policy.check_message(
            services.settings, build_mime(mail), domain.name
        )
        queue_id = await submitter.accept(
            user=user,
            domain=domain,
            mail_from=mail.sender[1],
            recipients=recipients,
            message=message,
            origin=Origin(
                source="api",
                client_ip=call.request.remote or "",
                helo="api",
                tls=None,
                authenticated=True,
                api_key_id=scope.api_key_id,
            ),
            tags=mail.tags,
            not_before=mail.send_at,
            track_links=mail.track_links,
            track_opens=mail.track_opens,
        )
    except Exception as exc:
        _give_back(held)
        if isinstance(exc, policy.Refused):
            raise send_error(exc) from None
        raise
    return {"MessageID": queue_id}


def _give_back(held: Reservation | None) -> None:
    """The send limit reserved for a message that was not committed goes back. (Not on
    cancellation: a commit already under way may still hold the message.)"""
    if held is not None:
        held.release()


def _missing(code: int, text: str) -> ApiError:
    return ApiError(code, text, extra={"SMTPResponse": replies.AUTH_INVALID})


@command(
    "emailgateway.smtprelay",
    auth="admin",
    storage_error=storage_unavailable(extra={"SMTPResponse": replies.TEMPORARY}),
)
async def smtp_relay(call: Call) -> dict[str, Any]:
    """The SMTP relay contract: check a credential pair and, optionally, an envelope and a
    raw message against the relay's policy; with RawEmail, queue the message exactly as an
    SMTP submission would be (DKIM-signed, committed before the answer). ``SMTPResponse`` is
    the SMTP reply the relay would give. The checks are the SMTP submission's, in its order
    (docs/smtp.md): the credentials of a deleted sender domain answer 4 with the reply an
    open SMTP session gets at MAIL, ``550 5.7.1``.

    ``UUID`` is an idempotency key of the credential's account, remembered for 24 hours from
    the first call that queues a message with it: a call repeating a UUID (a retry after a
    timeout, or several at once) queues nothing and answers what the first call answered, the
    same ``queued as <id>``, whatever else it carries. While the first call is still queueing,
    a repeat waits for it up to 10 seconds, then answers 10 (retry later). A refused call
    queues nothing and remembers nothing: its retry is checked again.

    Parameters:
        SMTPUsername (String, required): SMTP username.
        SMTPPassword (String, required): SMTP password.
        UUID (String): the caller's unique message id: the idempotency key (above).
        MailFrom (String): envelope sender; must be in the credential's sender domain.
        RcptTo (String): comma-separated envelope recipients; required with RawEmail.
        Subject (String): the Subject header, when RawEmail has none.
        RawEmail (String): the message (RFC 5322); queued when given.

    Errors:
        0: Success
        1: Missing SMTPUsername
        2: Missing SMTPPassword
        3: Invalid SMTP credentials
        4: Invalid sender domain (MailFrom not in it, or the domain was deleted)
        5: Sender domain is not active
        6: Invalid user account
        7: User is not trusted or not enabled
        8: Recipient email address is suppressed
        9: Message refused (content checks, recipient syntax or count, send limit; not in the
            documents)
        10: A call with this UUID is still queueing its message; retry later (not in the
            documents)
    """
    p = call.params
    username, password = p.str("SMTPUsername") or "", p.str("SMTPPassword") or ""
    if not username:
        raise _missing(1, "Missing SMTPUsername")
    if not password:
        raise _missing(2, "Missing SMTPPassword")
    services = call.services
    directory, settings = services.directory, services.settings
    recipients = [r.strip() for r in (p.str("RcptTo") or "").split(",") if r.strip()]
    raw = p.raw("RawEmail")
    result: dict[str, Any] = {"SMTPUsername": username, "SMTPPassword": password}
    keys = call.request.app[IDEMPOTENCY]
    held: Reservation | None = None
    try:
        cred = await policy.authenticate(directory, username, password)
        uuid = p.str("UUID") or ""
        key = key_of(uuid) if raw and uuid else None
        if key is not None:
            # Before the checks: a retry answers what the first call did, even if, say, the
            # send limit is reached since (by that very message).
            done = await keys.completed(cred.user_id, key)
            if done is not None:
                return ok(SMTPResponse=replies.QUEUED.format(id=done), **result)
        sender = await policy.check_sender(directory, cred, p.str("MailFrom") or None)
        held = await policy.check_recipients(
            directory, services.limiter, settings, sender.user, recipients
        )
        if not raw:
            _give_back(held)  # a check only: nothing is sent
            return ok(**result)
        if not isinstance(raw, str):
            # A number, an object, or text that is not Unicode (a lone surrogate).
            raise policy.Refused(policy.Reason.MESSAGE_MALFORMED, "RawEmail is not text")
        if not recipients:
            raise ApiError(
                9,
                "RcptTo is required with RawEmail",
                extra={"SMTPResponse": replies.NO_RECIPIENTS},
            )
        submitter = _submitter(call)
        _data, message = await policy.check_message(
            settings, raw.encode("utf-8"), sender.domain.name
        )
        subject = clean_text(p.str("Subject") or "")[:MAX_SUBJECT]
        if subject and not message.values(b"subject"):
            message.headers.append(list(encoded_header("Subject", subject)))
        queue_id: str | None = None
        if key is not None:
            try:
                claim = await keys.claim(cred.user_id, key)
            except InProgress:
                raise ApiError(
                    10,
                    "A call with this UUID is still queueing its message; retry later",
                    extra={"SMTPResponse": replies.IN_PROGRESS},
                ) from None
            if claim.done:
                _give_back(held)
                return ok(SMTPResponse=replies.QUEUED.format(id=claim.queue_id), **result)
            queue_id = claim.queue_id
        try:
            queue_id = await submitter.accept(
                user=sender.user,
                domain=sender.domain,
                mail_from=sender.mail_from or from_addresses(message)[0],
                recipients=recipients,
                message=message,
                origin=Origin(
                    source="api",
                    client_ip=call.request.remote or "",
                    helo="smtprelay",
                    credential_id=cred.id,
                ),
                queue_id=queue_id,
            )
        except BaseException:
            if key is not None and queue_id is not None:
                # Nothing was committed: a retry may queue it. (Should this fail too, the
                # claim is abandoned and taken over after idempotency.STALE seconds.)
                with contextlib.suppress(Exception):
                    await asyncio.shield(keys.release(cred.user_id, key, queue_id))
            raise
    except Exception as exc:
        _give_back(held)
        if isinstance(exc, policy.Refused):
            raise relay_error(exc) from None
        raise
    if key is not None:
        try:
            await keys.complete(cred.user_id, key, queue_id)
        except Exception as exc:
            # The commit decides the answer: the message is queued. A retry finds it by the
            # claim's queue id once the claim is stale.
            log.warning("smtprelay key not completed", error=type(exc).__name__)
    log.info("smtprelay queued", uuid=clean_text(uuid)[:64], queue_id=queue_id)
    return ok(SMTPResponse=replies.QUEUED.format(id=queue_id), **result)
