"""emailgateway.smtprelay's ``UUID``: an idempotency key per account.

The caller (an SMTP relay server) retries a call that timed out; the retry must not queue the
message a second time. The first call that queues a message under a UUID claims the UUID by
inserting a row (the primary key decides between concurrent calls, not a read before a write),
names the queue id it submits under, and marks the row completed once the message is
committed. A call with a UUID already claimed:

- completed: answers with that queue id, queueing nothing;
- still being submitted: waits for it (up to ``WAIT`` seconds), then answers as above, or
  ``InProgress`` (a temporary answer: retry later);
- abandoned (not completed after ``STALE`` seconds: its process died): if its message was
  committed all the same, that is the answer; if not, this call takes the claim over.

A call that is refused, or whose commit fails, releases its claim: nothing was queued, so its
retry is checked and queued afresh. A UUID is remembered for ``WINDOW`` seconds from its first
call; after that it is a new UUID. Expired rows are purged by the calls themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass

from relay.store.db import Database
from relay.store.repos import idempotency as repo

WINDOW = 24 * 3600.0
STALE = 120.0
WAIT = 10.0
_POLL = 0.2
_PURGE_EVERY = 300.0


class InProgress(Exception):
    """Another call with this UUID is still submitting its message."""


@dataclass(frozen=True, slots=True)
class Claim:
    queue_id: str
    done: bool  # True: the message was queued by an earlier call; answer with queue_id


def key_of(value: str) -> str:
    """The stored key: a SHA-256 of the caller's UUID (any text, any length)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class IdempotencyKeys:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._purged_at = 0.0

    async def completed(self, user_id: int, key: str) -> str | None:
        """The queue id an earlier call completed under this key, if any (a cheap read before
        the checks: a retry answers what the first call did, even if the account's send limit
        is reached since)."""
        async with self.db.read() as conn:
            row = await repo.find(conn, user_id, key, time.time() - WINDOW)
        return row.queue_id if row is not None and row.completed_at is not None else None

    async def claim(self, user_id: int, key: str) -> Claim:
        """This call's claim on the key (``done`` False: submit under ``queue_id``, then
        ``complete`` or ``release``), or the earlier call's queue id (``done`` True)."""
        await self._purge()
        deadline = time.monotonic() + WAIT
        while True:
            queue_id = str(uuid.uuid4())
            now = time.time()
            async with self.db.write() as conn:
                if await repo.claim(conn, user_id, key, queue_id, now, now - WINDOW):
                    return Claim(queue_id, done=False)
                row = await repo.find(conn, user_id, key, now - WINDOW)
                if row is None:
                    continue  # released or expired just now: claim again
                if row.completed_at is not None:
                    return Claim(row.queue_id, done=True)
                if now - row.created_at >= STALE:
                    if await repo.message_committed(conn, row.queue_id):
                        await repo.complete(conn, user_id, key, row.queue_id, now)
                        return Claim(row.queue_id, done=True)
                    if await repo.take_over(conn, user_id, key, row.queue_id, queue_id, now):
                        return Claim(queue_id, done=False)
                    continue
            if time.monotonic() >= deadline:
                raise InProgress
            await asyncio.sleep(_POLL)

    async def complete(self, user_id: int, key: str, queue_id: str) -> None:
        async with self.db.write() as conn:
            await repo.complete(conn, user_id, key, queue_id, time.time())

    async def release(self, user_id: int, key: str, queue_id: str) -> None:
        async with self.db.write() as conn:
            await repo.release(conn, user_id, key, queue_id)

    async def _purge(self) -> None:
        now = time.monotonic()
        if now - self._purged_at < _PURGE_EVERY:
            return
        self._purged_at = now
        async with self.db.write() as conn:
            await repo.purge(conn, time.time() - WINDOW)
