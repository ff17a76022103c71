"""Event names recorded in the ``events`` table, one row per recipient outcome."""

from __future__ import annotations

ACCEPTED = "accepted"  # queued: the 250 was sent (or the send API answered)
REJECTED = "rejected"  # refused at RCPT by policy (suppressed recipient)
DELIVERED = "delivered"  # a delivery server answered 2xx
DEFERRED = "deferred"  # 4xx or connection failure: will retry
BOUNCED = "bounced"  # 5xx from a delivery server
FAILED = "failed"  # gave up: maximum age reached, or queue cleared
SUPPRESSED = "suppressed"  # a hard bounce added the recipient to the suppression list

ALL = (ACCEPTED, REJECTED, DELIVERED, DEFERRED, BOUNCED, FAILED, SUPPRESSED)
