"""The one place where exceptions become SMTP replies, and where refusals are counted and logged.

A policy refusal (``relay.policy.Refused``) becomes its reply from ``replies.REFUSALS``, and one
log line ("refused": the stage, the reason, the reply, and what the caller knows of the session:
client address, sender, recipient). Storage trouble becomes ``451 4.3.0`` (never 250, never 5xx:
the client must retry). Anything unexpected becomes ``451 4.3.0`` too, logged here with its
traceback and never shown to the client.
"""

from __future__ import annotations

from typing import Any

import structlog

from relay import metrics
from relay.policy import Refused
from relay.smtp import replies
from relay.store.db import StorageUnavailable

log = structlog.get_logger("relay.smtp")


def reply_for(exc: BaseException, stage: str, **session: Any) -> str:
    """The reply to a command of ``stage`` (auth, mail, rcpt, data, protocol) that raised
    ``exc``; counted in relay_smtp_rejections_total. ``session``: what the log line says about
    the session (peer, mail_from, rcpt, ...): never a secret."""
    if isinstance(exc, Refused):
        reply = replies.refusal(exc)
        if exc.detail:
            session["detail"] = exc.detail
        log.info("refused", stage=stage, reason=exc.reason.value, reply=reply, **session)
    elif isinstance(exc, StorageUnavailable):
        log.warning("storage unavailable", error=str(exc), stage=stage, **session)
        reply = replies.TEMPORARY
    else:
        log.error("unexpected error in SMTP session", exc_info=exc, stage=stage, **session)
        reply = replies.TEMPORARY
    metrics.SMTP_REPLIES.labels(stage, reply[:3]).inc()
    return reply
