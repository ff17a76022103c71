"""The one place where exceptions become SMTP replies, and where refusals are counted.

A policy refusal (``relay.policy.Refused``) becomes its reply from ``replies.REFUSALS``.
Storage trouble becomes ``451 4.3.0`` (never 250, never 5xx: the client must retry). Anything
unexpected becomes ``451 4.3.0`` too, logged here with its traceback and never shown to the
client.
"""

from __future__ import annotations

import structlog

from relay import metrics
from relay.policy import Refused
from relay.smtp import replies
from relay.store.db import StorageUnavailable

log = structlog.get_logger("relay.smtp")


def reply_for(exc: BaseException, stage: str) -> str:
    """The reply to a command of ``stage`` (auth, mail, rcpt, data, protocol) that raised
    ``exc``; counted in relay_smtp_rejections_total."""
    if isinstance(exc, Refused):
        reply = replies.refusal(exc)
    elif isinstance(exc, StorageUnavailable):
        log.warning("storage unavailable", error=str(exc), stage=stage)
        reply = replies.TEMPORARY
    else:
        log.error("unexpected error in SMTP session", exc_info=exc, stage=stage)
        reply = replies.TEMPORARY
    metrics.SMTP_REPLIES.labels(stage, reply[:3]).inc()
    return reply
