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
PENDING_STATES = (QUEUED, DEFERRED)
FINAL_STATES = (DELIVERED, BOUNCED, FAILED)


@dataclass(slots=True)
class NewMessage:
    """An accepted message, about to be committed with its recipients and 'accepted' events."""

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


@dataclass(slots=True)
class QueuedMessage:
    id: str
    user_id: int
    domain_id: int
    mail_from: str
    header_from: str
    subject: str
    body: bytes
    created_at: float
    recipients: list[ClaimedRecipient] = field(default_factory=list)


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
