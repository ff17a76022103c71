"""The one place where exceptions become SMTP replies.

Checks raise ``Reject(reply)`` with a reply from ``replies``. Storage trouble becomes
``451 4.3.0`` (never 250, never 5xx: the client must retry). Anything unexpected becomes
``451 4.3.0`` too, logged here with its traceback and never shown to the client.
"""

from __future__ import annotations

import structlog

from relay.smtp import replies
from relay.store.db import StorageUnavailable

log = structlog.get_logger("relay.smtp")


class Reject(Exception):
    """A policy decision: answer the client with ``reply``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def reply_for(exc: BaseException, **context: object) -> str:
    if isinstance(exc, Reject):
        return exc.reply
    if isinstance(exc, StorageUnavailable):
        log.warning("storage unavailable", error=str(exc), **context)
        return replies.TEMPORARY
    log.error("unexpected error in SMTP session", exc_info=exc, **context)
    return replies.TEMPORARY
