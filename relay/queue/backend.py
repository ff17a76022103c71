"""The queue's one storage interface, and the choice of its implementation.

Everything the hot paths do to the queue goes through a ``QueueBackend``: the group commit of
accepted messages (``relay.queue.ingest``), the delivery worker's claims, loads, outcomes and
releases (``mta``), the feedback writer (``relay.queue.feedback``), the queue-depth gauge and the
wake-ups between nodes. One implementation per database, each holding its statements in
``relay.queue.sql``:

- ``relay.queue.sqlite.SqliteQueue``: one call into a dedicated thread with its own sqlite3
  connection per transaction (``SqliteRunner``);
- ``relay.queue.postgres.PostgresQueue``: one statement per transaction on a dedicated asyncpg
  connection (``PgConnection``), plus a LISTEN connection for wake-ups.

An instance is one connection: each user (the ingest writer, a delivery worker, the feedback
writer) opens its own, so they never queue behind each other in this process. Every storage
error surfaces as ``StorageUnavailable``, which callers retry or answer with a temporary
failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from relay.queue.model import (
    ClaimedRecipient,
    DeliveryOutcome,
    FeedbackRow,
    NewEvent,
    NewMessage,
    QueueDepth,
    QueuedMessage,
    Recorded,
)
from relay.store.db import Database


class QueueBackend(Protocol):
    async def ingest(self, messages: Sequence[NewMessage], events: Sequence[NewEvent]) -> None:
        """Commit accepted messages (recipients due at ``not_before`` or now, per-recipient
        variants, 'accepted' events) and stand-alone events in ONE transaction; on
        PostgreSQL the commit also notifies every node's delivery workers."""
        ...

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedRecipient]:
        """Lease up to ``limit`` due recipients to ``owner``, oldest due first (by id)."""
        ...

    async def load(self, claimed: Iterable[ClaimedRecipient]) -> list[QueuedMessage]:
        """The claimed recipients' messages (one query), each with its claimed recipients."""
        ...

    async def record_outcomes(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Write a batch of outcomes in ONE transaction: recipient state (only while still
        pending; a final one also loses its own body), events, suppressions and their
        events for hard bounces, message bodies dropped once every recipient is final."""
        ...

    async def release(self, owner: str, ids: Iterable[int] | None = None) -> int:
        """Give back ``owner``'s leases (all, or only ``ids``); returns how many."""
        ...

    async def renew(self, owner: str, ids: Iterable[int], until: float) -> int:
        """Extend ``owner``'s leases on ``ids`` (those still pending) to ``until``; how many."""
        ...

    async def lease_owners(self, prefix: str) -> list[str]:
        """The owners of pending recipients' leases whose names start with ``prefix``."""
        ...

    async def pending(self, now: float | None = None) -> QueueDepth:
        """Recipients waiting for delivery, those scheduled for later, and those held."""
        ...

    async def next_scheduled(self, now: float) -> float | None:
        """When the earliest pending recipient (a scheduled message's, or a deferral's next
        attempt) comes due, if any is due after ``now`` (the delivery worker sleeps until then
        instead of polling)."""
        ...

    async def record_feedback(self, rows: Sequence[FeedbackRow]) -> list[Recorded]:
        """Feedback rows (relay.queue.feedback) in ONE transaction; per row, what was
        recorded (None: unknown message or recipient, or a dedupe key seen before)."""
        ...

    async def listen(self, wake: Callable[[], None], listening: asyncio.Event) -> None:
        """Call ``wake`` whenever any node commits new recipients, until cancelled; keep
        ``listening`` set while that works. (SQLite: nothing outside this node writes the
        file, and this node's processes wake each other themselves; it only waits.)"""
        ...

    async def close(self) -> None: ...


def open_backend(db: Database, name: str) -> QueueBackend:
    """A new connection to the queue of ``db`` (``name`` names its thread or task)."""
    if db.is_sqlite:
        from relay.queue.sqlite import SqliteQueue

        return SqliteQueue(db, name)
    from relay.queue.postgres import PostgresQueue

    return PostgresQueue(db, name)
