"""What a webhook receives: the JSON body of one delivery (CONTRACT "Webhook deliveries").

    {"type": "delivered", "timestamp": "2026-01-31T18:42:09.000Z", "data": {...}}

``type`` is the event's public name whatever vocabulary the webhook was registered with;
``timestamp`` is when the event happened (ISO 8601, UTC). ``data`` has ``EventID``,
``MessageID`` (the queue id), ``Recipient``, ``DomainID``, ``Domain``, ``LoggedAt`` (Unix
seconds), ``Message.Headers`` (``From``, ``To``, ``Subject``, ``MessageID``; ``To`` is the
recipient the event is about, as in the event API), ``SMTPCode`` and ``SMTPResponse`` when the
event has a reply (delivered, bounced, deferred), and the event's own ``URL`` (clicked),
``UserAgent`` and ``IpAddress`` (opened, clicked, unsubscribed), ``BounceCategory``,
``DSNStatus``, ``DSNDiag`` (bounces) when recorded.

The body is built from the delivery row only, so every attempt of a delivery sends the same
bytes (the ``webhook-id`` is the same too; only ``webhook-timestamp`` and the signature change).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

# Fields of an event's ``data`` that are part of the public payload when present.
PASSED_THROUGH = ("URL", "UserAgent", "IpAddress", "BounceCategory", "DSNStatus", "DSNDiag")


@dataclass(slots=True)
class Delivery:
    """A claimed delivery, with its webhook's URL and its domain's name."""

    id: int
    webhook_id: int
    msg_id: str
    event: str
    attempts: int
    created_at: float
    user_id: int
    domain_id: int
    event_id: int | None
    message_id: str | None
    recipient: str | None
    logged_at: float
    smtp_code: int | None
    smtp_response: str | None
    data: Any
    header_from: str
    subject: str
    message_id_header: str
    url: str
    domain: str


_SECONDS: dict[int, str] = {}  # formatted whole seconds: events come in bursts of the same


def iso_utc(ts: float) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z`` (microseconds rounded as datetime does)."""
    second = math.floor(ts)
    micro = round((ts - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        moment = dt.datetime.fromtimestamp(second, dt.UTC)
        text = _SECONDS[second] = moment.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{text}{micro // 1000:03d}Z"


def _event_data(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def body(d: Delivery) -> bytes:
    data: dict[str, Any] = {
        "EventID": d.event_id,
        "MessageID": d.message_id,
        "Recipient": d.recipient,
        "DomainID": d.domain_id,
        "Domain": d.domain,
        "LoggedAt": int(d.logged_at),
        "Message": {
            "Headers": {
                "From": d.header_from,
                "To": d.recipient or "",
                "Subject": d.subject,
                "MessageID": d.message_id_header,
            }
        },
    }
    if d.smtp_code is not None or d.smtp_response:
        data["SMTPCode"] = d.smtp_code
        data["SMTPResponse"] = d.smtp_response or ""
    extra = _event_data(d.data)
    for key in PASSED_THROUGH:
        if key in extra:
            data[key] = extra[key]
    document = {"type": d.event, "timestamp": iso_utc(d.logged_at), "data": data}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")
