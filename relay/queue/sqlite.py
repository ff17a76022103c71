"""The queue on SQLite: each operation is one call into a ``SqliteRunner`` thread.

A write is ``BEGIN IMMEDIATE``, the statements, ``COMMIT`` in that thread, under this process's
write lock (and the cross-process ``flock`` when several processes share the file); a read
(load, depth) runs outside any transaction, since WAL readers never wait. SQLite has a single
writer, so a claim needs no ``SKIP LOCKED``: the claim statement is serialized with every
other write.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence

from relay.queue import rows, sql
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
from relay.store.db import Database, SqliteRunner, sqlite_datetime, utcnow

Row = rows.Row


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _ingest(
    conn: sqlite3.Connection, messages: list[Row], rcpts: list[Row], evs: list[Row]
) -> None:
    if messages:
        conn.executemany(sql.SQLITE_INSERT_MESSAGE, messages)
        conn.executemany(sql.SQLITE_INSERT_RECIPIENT, rcpts)
    if evs:
        conn.executemany(sql.SQLITE_INSERT_EVENT, evs)


def _claim(conn: sqlite3.Connection, owner: str, until: float, now: float, limit: int) -> list[Row]:
    return conn.execute(sql.SQLITE_CLAIM, (owner, until, now, now, limit)).fetchall()


def _load(conn: sqlite3.Connection, ids: list[str]) -> list[Row]:
    return conn.execute(sql.SQLITE_LOAD.format(marks=_marks(len(ids))), ids).fetchall()


def _outcomes(
    conn: sqlite3.Connection,
    updates: list[Row],
    suppress: list[Row],
    event_rows: list[Row],
    finished: list[str],
    created: str,
) -> None:
    conn.executemany(sql.SQLITE_OUTCOME, updates)
    if suppress:
        conn.executemany(sql.SQLITE_SUPPRESS, [(*row, created) for row in suppress])
    conn.executemany(sql.SQLITE_INSERT_EVENT, event_rows)
    if finished:
        conn.execute(sql.SQLITE_DROP_BODIES.format(marks=_marks(len(finished))), finished)


def _release(conn: sqlite3.Connection, owner: str, ids: list[int] | None) -> int:
    if ids is None:
        return conn.execute(sql.SQLITE_RELEASE, (owner,)).rowcount
    stmt = sql.SQLITE_RELEASE_IDS.format(marks=_marks(len(ids)))
    return conn.execute(stmt, (owner, *ids)).rowcount


def _renew(conn: sqlite3.Connection, owner: str, ids: list[int], until: float) -> int:
    stmt = sql.SQLITE_RENEW.format(marks=_marks(len(ids)))
    return conn.execute(stmt, (until, owner, *ids)).rowcount


def _lease_owners(conn: sqlite3.Connection, prefix: str) -> list[str]:
    found = conn.execute(sql.SQLITE_LEASE_OWNERS, (len(prefix), prefix)).fetchall()
    return [str(row[0]) for row in found]


def _depth(conn: sqlite3.Connection, now: float) -> tuple[int, int, int]:
    total, scheduled, held = conn.execute(sql.SQLITE_DEPTH, (now,)).fetchone()
    return int(total), int(scheduled), int(held)


def _next_scheduled(conn: sqlite3.Connection, now: float) -> float | None:
    due: float | None = conn.execute(sql.SQLITE_NEXT_SCHEDULED, (now,)).fetchone()[0]
    return due


def _feedback(
    conn: sqlite3.Connection, feedback: Sequence[FeedbackRow], created: str
) -> list[Recorded]:
    """Record a batch set-based (relay/queue/sql.py, SQLITE_FEEDBACK_*): the same outcome as
    item by item, in a few statements (keys are unique within the batch)."""
    conn.execute(sql.SQLITE_FEEDBACK_SCRATCH)
    conn.execute(sql.SQLITE_FEEDBACK_CLEAR)
    conn.execute(sql.SQLITE_FEEDBACK_ITEMS, (json.dumps(feedback),))
    conn.execute(sql.SQLITE_FEEDBACK_KEYS)
    conn.execute(sql.SQLITE_FEEDBACK_EVENTS)
    recorded = conn.execute(sql.SQLITE_FEEDBACK_RECORDED).fetchall()
    conn.execute(sql.SQLITE_FEEDBACK_CLEAR)
    by_ordinal: dict[int, Recorded] = {}
    suppress: list[tuple[int, str, str, str, str]] = []
    for ordinal, user_id, queued_rcpt, source, reason in recorded:
        email = None
        if source is not None:
            # Python's lower(), as everywhere else a suppression is written (SQLite's lower()
            # folds ASCII only).
            email = queued_rcpt.lower()
            suppress.append((user_id, email, reason, source, created))
        by_ordinal[ordinal] = (user_id, email)
    if suppress:
        conn.executemany(sql.SQLITE_SUPPRESS, suppress)
    return [by_ordinal.get(row[0]) for row in feedback]


class SqliteQueue:
    """``QueueBackend`` on SQLite (see relay/queue/backend.py)."""

    def __init__(self, db: Database, name: str) -> None:
        self._runner = SqliteRunner(db, name)

    async def ingest(self, messages: Sequence[NewMessage], events: Sequence[NewEvent]) -> None:
        m, r, e = rows.ingest(messages, events, time.time())
        await self._runner.write(_ingest, m, r, e)

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[ClaimedRecipient]:
        now = time.time() if now is None else now
        found = await self._runner.write(_claim, owner, now + lease_seconds, now, limit)
        return sorted(map(rows.claimed, found), key=lambda c: c.id)

    async def load(self, claimed: Iterable[ClaimedRecipient]) -> list[QueuedMessage]:
        grouped = rows.by_message(list(claimed))
        if not grouped:
            return []
        return rows.loaded(await self._runner.read(_load, list(grouped)), grouped)

    async def record_outcomes(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        if not outcomes:
            return
        updates, suppress, event_rows, finished = rows.outcomes(outcomes, time.time())
        created = sqlite_datetime(utcnow())
        await self._runner.write(_outcomes, updates, suppress, event_rows, finished, created)

    async def release(self, owner: str, ids: Iterable[int] | None = None) -> int:
        id_list = None if ids is None else list(ids)
        if id_list == []:
            return 0
        return await self._runner.write(_release, owner, id_list)

    async def renew(self, owner: str, ids: Iterable[int], until: float) -> int:
        id_list = list(ids)
        if not id_list:
            return 0
        return await self._runner.write(_renew, owner, id_list, until)

    async def lease_owners(self, prefix: str) -> list[str]:
        return await self._runner.read(_lease_owners, prefix)

    async def pending(self, now: float | None = None) -> QueueDepth:
        now = time.time() if now is None else now
        total, scheduled, held = await self._runner.read(_depth, now)
        return QueueDepth(total - scheduled, scheduled, held)

    async def next_scheduled(self, now: float) -> float | None:
        due = await self._runner.read(_next_scheduled, now)
        return None if due is None else float(due)

    async def record_feedback(self, feedback: Sequence[FeedbackRow]) -> list[Recorded]:
        if not feedback:
            return []
        return await self._runner.write(_feedback, feedback, sqlite_datetime(utcnow()))

    async def listen(self, wake: Callable[[], None], listening: asyncio.Event) -> None:
        # Only this node writes the file; its processes wake each other (relay/procs.py).
        listening.set()
        try:
            await asyncio.Event().wait()
        finally:
            listening.clear()

    async def close(self) -> None:
        await self._runner.close()
