"""What moves through the queue, independent of the backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Recipient states.
QUEUED = "queued"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCED = "bounced"
FAILED = "failed"
# Put on hold by an operator (relay queue hold, queue.hold): never claimed until released,
# then queued again (never tried) or deferred (tried before).
HELD = "held"
# Waiting for a delivery attempt (what the claim takes, the queue-depth gauge counts).
PENDING_STATES = (QUEUED, DEFERRED)
# Not final: the message is still wanted by someone (its body is kept).
LIVE_STATES = (QUEUED, DEFERRED, HELD)
FINAL_STATES = (DELIVERED, BOUNCED, FAILED)
# Not stored: how a queued recipient whose message's not_before is still ahead is shown (it
# is never tried before then).
SCHEDULED = "scheduled"
# The states the queue's views show and filter on (relay queue list, queue.list).
SHOWN_STATES = (QUEUED, SCHEDULED, DEFERRED, HELD)


def shown_state(state: str, next_attempt_at: float, now: float) -> str:
    """A recipient's state as the queue's views show it: ``scheduled`` for a queued recipient
    not yet due (only scheduled sending leaves a never-tried recipient due in the future)."""
    return SCHEDULED if state == QUEUED and next_attempt_at > now else state


@dataclass(slots=True)
class NewMessage:
    """An accepted message, about to be committed with its recipients and 'accepted' events.

    ``not_before`` (Unix time): scheduled sending; its recipients become due then, not at
    acceptance. ``variants``: per-recipient bodies (recipient as in ``recipients`` -> the full
    signed message for that recipient, e.g. with its own tracking links); each such recipient
    is delivered in its own SMTP transaction with its own body, the others share ``body`` (which
    may be empty when every recipient has a variant).
    """

    id: str
    user_id: int
    domain_id: int
    source: str  # "smtp" | "api"
    mail_from: str
    recipients: list[str]
    body: bytes
    header_from: str = ""
    subject: str = ""
    message_id_header: str = ""
    client_ip: str = ""
    credential_id: int | None = None
    api_key_id: int | None = None
    created_at: float = 0.0
    # The send API's Tags: kept on the 'accepted' events (data.tags) for per-tag statistics.
    tags: list[str] = field(default_factory=list)
    not_before: float | None = None
    variants: dict[str, bytes] | None = None


@dataclass(slots=True)
class NewEvent:
    """An event not tied to a queued message commit (e.g. a recipient refused at RCPT)."""

    user_id: int
    domain_id: int
    event: str
    recipient: str | None = None
    message_id: str | None = None
    smtp_code: int | None = None
    smtp_response: str | None = None
    data: dict[str, Any] | None = None
    created_at: float = 0.0


@dataclass(slots=True)
class ClaimedRecipient:
    id: int
    message_id: str
    rcpt: str
    rcpt_domain: str
    attempts: int
    created_at: float
    body: bytes | None = None  # this recipient's own message (a variant), else the message's


@dataclass(slots=True)
class QueuedMessage:
    id: str
    user_id: int
    domain_id: int
    mail_from: str
    header_from: str
    subject: str
    body: bytes
    not_before: float | None
    created_at: float
    recipients: list[ClaimedRecipient] = field(default_factory=list)

    @property
    def due_since(self) -> float:
        """When the message became due: its acceptance, or its scheduled time (the start of
        ``delivery.max_age``)."""
        return max(self.created_at, self.not_before or 0.0)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    pending: int  # queued or deferred, scheduled ones not counted
    scheduled: int  # queued, waiting for their message's not_before
    held: int = 0  # on hold until an operator releases them


@dataclass(slots=True)
class DeliveryOutcome:
    """What one delivery attempt did to one recipient; written by ``record_outcomes``."""

    recipient_id: int
    message_id: str
    user_id: int
    domain_id: int
    rcpt: str
    state: str  # the recipient's new state (QUEUED is never written back)
    event: str  # relay.events name of the event row
    attempts: int  # attempts so far, this one included
    next_attempt_at: float  # when a deferred recipient is due again (unchanged otherwise)
    code: int | None = None
    response: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    # A hard bounce (5.1.x addressing status, RFC 3463): also suppress for the account.
    suppress: bool = False
    created_at: float = 0.0


# A feedback item as relay/queue/feedback.py hands it to the backend: (ordinal, message id,
# recipient, event, smtp code, smtp response, data JSON, suppression source, suppression reason,
# dedupe key, created_at).
FeedbackRow = tuple[
    int, str, str, str, int | None, str | None, str | None, str | None, str | None,
    str | None, float,
]  # fmt: skip
# What the backend says about one feedback row: None = not recorded; else (user_id, the email
# suppressed or None).
Recorded = tuple[int, str | None] | None
