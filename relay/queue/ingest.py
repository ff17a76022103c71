"""Group commit: every accepted message, its recipients and 'accepted' events in one commit.

Sessions call ``submit`` and wait; one writer task takes everything pending, writes it in a
single transaction (one fsync on SQLite's WAL, one round of WAL flush on PostgreSQL) and then
wakes every waiter. While a commit is in flight the next batch gathers, so under load the
fsync cost is shared by many messages instead of paid by each; with one client it costs what
a plain commit costs. Nothing is acknowledged before its commit returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from typing import Any

import structlog

from relay import events, metrics
from relay.queue import sql
from relay.queue.model import NewEvent, NewMessage
from relay.services import Services
from relay.store.db import Database, SqliteRunner, StorageUnavailable, asyncpg_dsn

log = structlog.get_logger("relay.queue")

NOTIFY_CHANNEL = "relay_queue"  # see sql.PG_INGEST


class QueueWriter:
    def __init__(self, services: Services, *, max_batch: int = 512, commit_timeout: float = 30.0):
        self.services = services
        self.max_batch = max_batch
        self.commit_timeout = commit_timeout
        self._messages: list[tuple[NewMessage, asyncio.Future[None]]] = []
        self._events: list[NewEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        db = services.db
        self._backend: _SqliteIngest | _PostgresIngest = (
            _SqliteIngest(db) if db.is_sqlite else _PostgresIngest(db)
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-writer")

    async def submit(self, message: NewMessage) -> None:
        """Return once the message is committed; raise StorageUnavailable otherwise."""
        if self._closing:
            raise StorageUnavailable("queue is shutting down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._messages.append((message, fut))
        self._wake.set()
        await fut

    def record(self, event: NewEvent) -> None:
        """Queue an event for the next commit; nobody waits for it."""
        if not event.created_at:
            event.created_at = time.time()
        self._events.append(event)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._messages or self._events:
                batch, self._messages = (
                    self._messages[: self.max_batch],
                    self._messages[self.max_batch :],
                )
                evs, self._events = self._events, []
                await self._commit(batch, evs)
            if self._closing:
                return

    async def _commit(
        self,
        batch: list[tuple[NewMessage, asyncio.Future[None]]],
        evs: list[NewEvent],
        deadline: float | None = None,
    ) -> None:
        started = time.perf_counter()
        timeout = self.commit_timeout
        if deadline is not None:
            timeout = deadline - time.monotonic()
        try:
            if timeout <= 0:
                raise StorageUnavailable("no time left to commit")
            await asyncio.wait_for(self._write([m for m, _ in batch], evs), timeout)
        except Exception as exc:
            log.error("queue commit failed", messages=len(batch), error=type(exc).__name__)
            if deadline is None and len(batch) + len(evs) > 1:
                # One bad message must not cost the others their commit: each alone now,
                # within one commit timeout in all (in an outage they all fail: 451 each).
                until = time.monotonic() + self.commit_timeout
                for item in batch:
                    await self._commit([item], [], until)
                for ev in evs:
                    await self._commit([], [ev], until)
                return
            err = StorageUnavailable(str(exc))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        metrics.QUEUE_COMMIT_SECONDS.observe(time.perf_counter() - started)
        if batch:
            metrics.QUEUE_COMMIT_BATCH.observe(len(batch))
            metrics.MESSAGES_ACCEPTED.inc(len(batch))
            metrics.RECIPIENTS_ACCEPTED.inc(sum(len(m.recipients) for m, _ in batch))
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
        if batch:
            self.services.notify_enqueued()

    async def _write(self, msgs: list[NewMessage], evs: list[NewEvent]) -> None:
        now = time.time()
        message_rows: list[tuple[Any, ...]] = []
        recipient_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        for m in msgs:
            created = m.created_at or now
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
                    len(m.body),
                    m.body,
                    created,
                )
            )
            # The send API's Tags ride on the 'accepted' events (domainstats TagStats).
            tags = json.dumps({"tags": m.tags}) if m.tags else None
            for rcpt in m.recipients:
                recipient_rows.append((m.id, rcpt, rcpt.rpartition("@")[2].lower(), created))
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
        await self._backend.write(message_rows, recipient_rows, event_rows)

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, self.commit_timeout + 5)
        await self._backend.close()


Rows = list[tuple[Any, ...]]


def _columns(rows: Rows, width: int) -> list[list[Any]]:
    """Row tuples to per-column arrays (unnest's arguments)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


class _SqliteIngest:
    """The group commit as one SqliteRunner transaction (one executor call per batch)."""

    def __init__(self, db: Database) -> None:
        self._runner = SqliteRunner(db, "queue-writer")

    @staticmethod
    def _insert(conn: sqlite3.Connection, messages: Rows, recipients: Rows, evs: Rows) -> None:
        if messages:
            conn.executemany(sql.SQLITE_INSERT_MESSAGE, messages)
            conn.executemany(sql.SQLITE_INSERT_RECIPIENT, [(*r, r[3], r[3]) for r in recipients])
        if evs:
            conn.executemany(sql.SQLITE_INSERT_EVENT, evs)

    async def write(self, messages: Rows, recipients: Rows, evs: Rows) -> None:
        await self._runner.write(self._insert, messages, recipients, evs)

    async def close(self) -> None:
        await self._runner.close()


class _PostgresIngest:
    """A dedicated asyncpg connection; a batch is one statement (see sql.PG_INGEST)."""

    def __init__(self, db: Database) -> None:
        self._dsn = asyncpg_dsn(db.url)
        self._conn: Any = None

    async def write(self, messages: Rows, recipients: Rows, evs: Rows) -> None:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        m, r, e = _columns(messages, 14), _columns(recipients, 4), _columns(evs, 9)
        try:
            await self._conn.execute(sql.PG_INGEST, *m, *r, *e)
        except BaseException:
            # A failed or interrupted statement may leave the connection unusable: start over.
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            raise

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None
