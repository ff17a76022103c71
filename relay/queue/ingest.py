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
import time
from typing import Any

import structlog
from sqlalchemy import insert

from relay import events, metrics
from relay.queue.model import QUEUED, NewEvent, NewMessage
from relay.services import Services
from relay.store import schema as t
from relay.store.db import StorageUnavailable

log = structlog.get_logger("relay.queue")

NOTIFY_CHANNEL = "relay_queue"


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
        self, batch: list[tuple[NewMessage, asyncio.Future[None]]], evs: list[NewEvent]
    ) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._write([m for m, _ in batch], evs), self.commit_timeout)
        except Exception as exc:
            log.error("queue commit failed", messages=len(batch), error=type(exc).__name__)
            err = StorageUnavailable(str(exc))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        metrics.QUEUE_COMMIT_SECONDS.observe(time.perf_counter() - started)
        if batch:
            metrics.QUEUE_COMMIT_BATCH.observe(len(batch))
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
        if batch:
            self.services.notify_enqueued()

    async def _write(self, msgs: list[NewMessage], evs: list[NewEvent]) -> None:
        now = time.time()
        message_rows: list[dict[str, Any]] = []
        recipient_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        for m in msgs:
            created = m.created_at or now
            message_rows.append(
                {
                    "id": m.id,
                    "user_id": m.user_id,
                    "domain_id": m.domain_id,
                    "credential_id": m.credential_id,
                    "api_key_id": m.api_key_id,
                    "source": m.source,
                    "mail_from": m.mail_from,
                    "header_from": m.header_from[:998],
                    "subject": m.subject[:998],
                    "message_id_header": m.message_id_header[:998],
                    "client_ip": m.client_ip,
                    "size": len(m.body),
                    "body": m.body,
                    "created_at": created,
                }
            )
            for rcpt in m.recipients:
                recipient_rows.append(
                    {
                        "message_id": m.id,
                        "rcpt": rcpt,
                        "rcpt_domain": rcpt.rpartition("@")[2].lower(),
                        "state": QUEUED,
                        "attempts": 0,
                        "next_attempt_at": created,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
                event_rows.append(
                    {
                        "created_at": created,
                        "user_id": m.user_id,
                        "domain_id": m.domain_id,
                        "message_id": m.id,
                        "recipient": rcpt,
                        "event": events.ACCEPTED,
                        "smtp_code": 250,
                        "smtp_response": None,
                        "data": {"tags": m.tags} if m.tags else None,
                    }
                )
        for e in evs:
            event_rows.append(
                {
                    "created_at": e.created_at or now,
                    "user_id": e.user_id,
                    "domain_id": e.domain_id,
                    "message_id": e.message_id,
                    "recipient": e.recipient,
                    "event": e.event,
                    "smtp_code": e.smtp_code,
                    "smtp_response": e.smtp_response,
                    "data": e.data,
                }
            )
        db = self.services.db
        async with db.write() as conn:
            if message_rows:
                await conn.execute(insert(t.messages), message_rows)
                await conn.execute(insert(t.recipients), recipient_rows)
            if event_rows:
                await conn.execute(insert(t.events), event_rows)
            if message_rows and not db.is_sqlite:
                # Delivered at commit: wakes delivery workers on every node (LISTEN).
                await conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, self.commit_timeout + 5)
