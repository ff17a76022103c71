"""Feedback: the one path for what comes back about a message after it was handed on.

Tracking hits (opened, clicked, unsubscribed), delivery status notifications and complaints
from the MX listener, PowerMTA accounting records: each becomes a ``Feedback`` item about one
recipient of one queued message. ``FeedbackWriter`` commits them through a group commit (no
transaction per hit or per record): the event, with the account and domain read from the
message row in the same statement; for a suppressing item (hard bounce, complaint,
unsubscribe) the account's suppression row and a ``suppressed`` event; the suppression is then
published on the invalidation bus, so every SMTP process refuses the address at once.

An item whose message or recipient is unknown (forged, or its rows are gone) records nothing;
an item with a ``dedupe_key`` already recorded once (a replayed accounting file, a report sent
twice) records nothing either. ``record`` says which items were recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from relay.cache import LocalBus
from relay.directory import Topics
from relay.queue.backend import open_backend
from relay.queue.groupcommit import GroupCommit
from relay.queue.model import FeedbackRow, Recorded
from relay.store.db import Database, storable_text

log = structlog.get_logger("relay.queue")

SUPPRESSION_SOURCES = ("bounce", "complaint", "unsubscribe")


@dataclass(slots=True)
class Feedback:
    message_id: str  # the queue id ("250 2.0.0 Ok: queued as <id>")
    recipient: str  # an envelope recipient of that message (matched case-insensitively)
    event: str  # relay.events name: opened, clicked, unsubscribed, bounced, complained, ...
    smtp_code: int | None = None
    smtp_response: str | None = None
    data: dict[str, Any] | None = None
    # Also suppress the recipient for the message's account, with this source
    # (SUPPRESSION_SOURCES) and reason.
    suppress: str | None = None
    suppress_reason: str | None = None
    # Recorded at most once per key, ever.
    dedupe_key: str | None = None
    created_at: float = 0.0


def _key(key: str | None) -> str | None:
    """Keys fit the column; a longer one is replaced by its digest."""
    if key is None or len(key) <= 200:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def prepare(items: Sequence[Feedback], now: float | None = None) -> list[FeedbackRow]:
    """The rows of ``items`` (ordinal 0: numbered at commit). Pure, so a caller with a thread
    of its own (the accounting reader) builds them there, off the event loop's commit path."""
    now = time.time() if now is None else now
    rows: list[FeedbackRow] = []
    for f in items:
        if f.suppress is not None and f.suppress not in SUPPRESSION_SOURCES:
            raise ValueError(f"unknown suppression source {f.suppress!r}")
        data = {k: storable_text(v) if isinstance(v, str) else v for k, v in (f.data or {}).items()}
        rows.append(
            (
                0,
                f.message_id[:36],
                f.recipient[:320],
                f.event[:32],
                f.smtp_code,
                storable_text(f.smtp_response),
                json.dumps(data) if data else None,
                f.suppress,
                (storable_text(f.suppress_reason) or f.event)[:255] if f.suppress else None,
                _key(f.dedupe_key),
                f.created_at or now,
            )
        )
    return rows


class FeedbackWriter:
    """One per process; ``start`` before use, ``stop`` commits what is pending."""

    def __init__(self, db: Database, bus: LocalBus | None = None, *, max_batch: int = 1000):
        self.db = db
        self.bus = bus
        self._backend = open_backend(db, "feedback-writer")
        self._group: GroupCommit[FeedbackRow, Recorded] = GroupCommit(
            self._commit,
            name="feedback-writer",
            max_batch=max_batch,
            retry_delays=(0.2, 1.0),
            on_commit=self._publish,
        )

    def start(self) -> None:
        self._group.start()

    async def record(self, items: Sequence[Feedback]) -> list[bool]:
        """Commit ``items``; per item, True if recorded (False: unknown message or recipient,
        or a dedupe key seen before). Raises StorageUnavailable when it cannot commit."""
        return await self.record_prepared(prepare(items))

    async def record_prepared(self, rows: Sequence[FeedbackRow]) -> list[bool]:
        """``record`` of rows from ``prepare``."""
        return [r is not None for r in await self._group.submit(rows)]

    def enqueue(self, items: Sequence[Feedback]) -> None:
        """Commit ``items`` with the next batch without waiting (failures are logged)."""
        self._group.enqueue(prepare(items))

    async def _commit(self, prepared: list[FeedbackRow]) -> list[Recorded]:
        results: list[Recorded] = [None] * len(prepared)
        # The same key twice in one batch: the first one counts (PostgreSQL's ON CONFLICT
        # would let both through in one statement).
        seen: set[str] = set()
        todo: list[FeedbackRow] = []
        for ordinal, row in enumerate(prepared):
            key = row[9]
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            todo.append((ordinal, *row[1:]))
        for row, result in zip(todo, await self._backend.record_feedback(todo), strict=True):
            results[row[0]] = result
        return results

    async def _publish(self, _items: list[FeedbackRow], results: Sequence[Recorded]) -> None:
        """After the commit: every node's SMTP side refuses the suppressed addresses."""
        if self.bus is None:
            return
        for result in results:
            if result is not None and result[1] is not None:
                try:
                    await self.bus.publish(Topics.SUPPRESSION, f"{result[0]}:{result[1]}")
                except Exception as exc:
                    log.warning("suppression not published", error=repr(exc))

    async def stop(self) -> None:
        await self._group.stop()
        await self._backend.close()
