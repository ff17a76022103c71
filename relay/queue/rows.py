"""The queue's objects as the row tuples of relay/queue/sql.py, the same for both backends.

Column order follows sql.py's ``*_COLUMNS``. SQLite executes the tuples (executemany);
PostgreSQL turns them into per-column arrays for ``unnest`` (``relay.store.pg.columns``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relay import events
from relay.queue.model import (
    FINAL_STATES,
    ClaimedRecipient,
    DeliveryOutcome,
    NewEvent,
    NewMessage,
    QueuedMessage,
)
from relay.store.db import storable_text

Row = tuple[Any, ...]
SUPPRESSED_BY_BOUNCE = "bounce"


def ingest(
    messages: Sequence[NewMessage], evs: Sequence[NewEvent], now: float
) -> tuple[list[Row], list[Row], list[Row]]:
    """(message rows, recipient rows, event rows) of one group commit."""
    message_rows: list[Row] = []
    recipient_rows: list[Row] = []
    event_rows: list[Row] = []
    for m in messages:
        created = m.created_at or now
        due = max(created, m.not_before) if m.not_before else created
        variants = m.variants or {}
        size = len(m.body) or max((len(v) for v in variants.values()), default=0)
        message_rows.append(
            (
                m.id,
                m.user_id,
                m.domain_id,
                m.credential_id,
                m.api_key_id,
                m.source,
                m.mail_from,
                m.header_from[:998],
                m.subject[:998],
                m.message_id_header[:998],
                m.client_ip,
                size,
                m.body,
                m.not_before,
                created,
            )
        )
        # The send API's Tags ride on the 'accepted' events (domainstats TagStats).
        tags = json.dumps({"tags": m.tags}) if m.tags else None
        for rcpt in m.recipients:
            domain = rcpt.rpartition("@")[2].lower()
            recipient_rows.append((m.id, rcpt, domain, due, variants.get(rcpt), created))
            event_rows.append(
                (created, m.user_id, m.domain_id, m.id, rcpt, events.ACCEPTED, 250, None, tags)
            )
    for e in evs:
        event_rows.append(
            (
                e.created_at or now,
                e.user_id,
                e.domain_id,
                e.message_id,
                e.recipient,
                e.event,
                e.smtp_code,
                e.smtp_response,
                json.dumps(e.data) if e.data is not None else None,
            )
        )
    return message_rows, recipient_rows, event_rows


def outcomes(
    batch: Sequence[DeliveryOutcome], now: float
) -> tuple[list[Row], list[Row], list[Row], list[str]]:
    """(recipient updates, suppression rows, event rows, finished message ids) of one batch.

    A hard bounce also suppresses the address for the account (once per account and address
    in a batch) and writes a ``suppressed`` event.
    """
    updates: list[Row] = []
    event_rows: list[Row] = []
    hard: dict[tuple[int, str], DeliveryOutcome] = {}
    finished: set[str] = set()
    for o in batch:
        at = o.created_at or now
        response = storable_text(o.response)
        updates.append(
            (o.recipient_id, o.state, o.attempts, o.next_attempt_at, o.code, response, at)
        )
        event_rows.append(_event(o, o.event, at, response))
        if o.suppress:
            hard[(o.user_id, o.rcpt.lower())] = o
        if o.state in FINAL_STATES:
            finished.add(o.message_id)
    suppress: list[Row] = []
    for (user_id, email), o in hard.items():
        response = storable_text(o.response)
        reason = (response or "hard bounce")[:255]
        suppress.append((user_id, email, reason, SUPPRESSED_BY_BOUNCE))
        event_rows.append(_event(o, events.SUPPRESSED, o.created_at or now, response))
    return updates, suppress, event_rows, sorted(finished)


def _event(o: DeliveryOutcome, name: str, at: float, response: str | None) -> Row:
    data = None
    if o.data:
        data = json.dumps(
            {k: storable_text(v) if isinstance(v, str) else v for k, v in o.data.items()}
        )
    return (at, o.user_id, o.domain_id, o.message_id, o.rcpt, name, o.code, response, data)


def claimed(row: Sequence[Any]) -> ClaimedRecipient:
    """A claim's row (sql.CLAIMED_COLUMNS)."""
    rid, message_id, rcpt, rcpt_domain, attempts, created_at, body = row
    return ClaimedRecipient(
        rid, message_id, rcpt, rcpt_domain, attempts, created_at, bytes(body) if body else None
    )


def by_message(claimed: Sequence[ClaimedRecipient]) -> dict[str, list[ClaimedRecipient]]:
    grouped: dict[str, list[ClaimedRecipient]] = {}
    for c in claimed:
        grouped.setdefault(c.message_id, []).append(c)
    return grouped


def loaded(
    rows: Sequence[Sequence[Any]], grouped: dict[str, list[ClaimedRecipient]]
) -> list[QueuedMessage]:
    """A load's rows (sql.LOADED_COLUMNS), each with its claimed recipients, oldest first."""
    out = []
    for mid, user_id, domain_id, mail_from, header_from, subject, body, not_before, at in rows:
        out.append(
            QueuedMessage(
                id=mid,
                user_id=user_id,
                domain_id=domain_id,
                mail_from=mail_from,
                header_from=header_from,
                subject=subject,
                # NULL only once every recipient is final; a claimed one never is.
                body=bytes(body) if body is not None else b"",
                not_before=not_before,
                created_at=at,
                recipients=grouped[mid],
            )
        )
    out.sort(key=lambda q: (q.created_at, q.id))
    return out
