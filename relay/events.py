"""Event names recorded in the ``events`` table, one row per recipient outcome, and how the
API documents name them.

The documents speak three vocabularies for the same outcomes: the internal commands and webhook
configuration say ``delivery``/``bounce``/...; the public v1 routes and the CSV export say
``delivered``/``bounced``/...; the statistics describe Elasticsearch names
(``accepted-by-oempro``, ``accepted-by-mta``, ``rejected-by-oempro``, ``rejected-by-mta``).
Every one of those spellings is accepted as a filter (``FILTERS``); responses use
``internal_name`` (getevents, aggrevents, v1 events) or our own name (CSV export).
"""

from __future__ import annotations

ACCEPTED = "accepted"  # queued: the 250 was sent (or the send API answered)
REJECTED = "rejected"  # refused at RCPT by policy (suppressed recipient)
DELIVERED = "delivered"  # a delivery server answered 2xx
DEFERRED = "deferred"  # 4xx or connection failure: will retry
BOUNCED = "bounced"  # 5xx from a delivery server
FAILED = "failed"  # gave up: maximum age reached, or queue cleared
SUPPRESSED = "suppressed"  # a hard bounce added the recipient to the suppression list

# PowerMTA's own delivery of a message we handed to it (an accounting `d` record): the
# receiving MX accepted it. Not a second `delivered`: statistics count the hand-off (DELIVERED)
# once, and this event only says how far the message got after it.
ACCEPTED_BY_MTA = "accepted-by-mta"

ALL = (ACCEPTED, REJECTED, DELIVERED, DEFERRED, BOUNCED, FAILED, SUPPRESSED, ACCEPTED_BY_MTA)

# Engagement and feedback-loop outcomes the documents name. No component of this relay records
# them yet (there is no open/click tracking or complaint ingestion); the names are fixed here so
# filters, webhooks and statistics agree on them when one does. Until then they match nothing.
OPENED = "opened"
CLICKED = "clicked"
UNSUBSCRIBED = "unsubscribed"
COMPLAINED = "complained"
ENGAGEMENT = (OPENED, CLICKED, UNSUBSCRIBED, COMPLAINED)

# The statistics' classes (001: emailgateway.listrecipientdomains "Counts semantics").
SENT_CLASS = (ACCEPTED,)  # "Sent" in domain/account stats: accepted-by-oempro
DELIVERED_CLASS = (DELIVERED,)  # accepted-by-mta
FAILED_CLASS = (BOUNCED, REJECTED, FAILED)  # bounced, rejected-by-mta, rejected-by-oempro

# Internal webhook event names (emailgateway.addwebhook) -> public names (/api/v1/webhooks).
WEBHOOK_EVENTS: dict[str, str] = {
    "delivery": DELIVERED,
    "bounce": BOUNCED,
    "open": OPENED,
    "click": CLICKED,
    "unsubscribe": UNSUBSCRIBED,
    "complaint": COMPLAINED,
}
_INTERNAL_BY_OURS = {ours: internal for internal, ours in WEBHOOK_EVENTS.items()}

# Every spelling the documents use for an event filter -> our event names.
FILTERS: dict[str, tuple[str, ...]] = {
    "accepted": (ACCEPTED,),
    "accepted-by-oempro": (ACCEPTED,),
    "delivered": (DELIVERED,),
    "delivery": (DELIVERED,),
    "accepted-by-mta": (DELIVERED, ACCEPTED_BY_MTA),
    "bounced": (BOUNCED,),
    "bounce": (BOUNCED,),
    "rejected-by-mta": (BOUNCED,),
    "rejected": (REJECTED,),
    "rejected-by-oempro": (REJECTED,),
    "deferred": (DEFERRED,),
    "failed": (FAILED,),
    "suppressed": (SUPPRESSED,),
    "opened": (OPENED,),
    "open": (OPENED,),
    "clicked": (CLICKED,),
    "click": (CLICKED,),
    "unsubscribed": (UNSUBSCRIBED,),
    "unsubscribe": (UNSUBSCRIBED,),
    "complained": (COMPLAINED,),
    "complaint": (COMPLAINED,),
}


def filter_names(value: str) -> tuple[str, ...]:
    """Our event names for a filter value; an unknown value matches nothing (empty tuple)."""
    return FILTERS.get(value.strip().lower(), ())


def internal_name(event: str) -> str:
    """The internal commands' name for one of ours (``delivered`` -> ``delivery``)."""
    return _INTERNAL_BY_OURS.get(event, event)


def webhook_event(value: str) -> str | None:
    """The internal webhook event name for any accepted spelling, or None if not an event."""
    value = value.strip().lower()
    if value in WEBHOOK_EVENTS:
        return value
    return _INTERNAL_BY_OURS.get(value)


def public_webhook_name(internal: str) -> str:
    """``delivery`` -> ``delivered``: the spelling of /api/v1/webhooks."""
    return WEBHOOK_EVENTS.get(internal, internal)
