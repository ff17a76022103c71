"""Group commit of accepted mail: every message, its recipients and 'accepted' events at once.

Sessions call ``submit`` and wait; the ``GroupCommit`` task takes everything pending and writes
it with ONE ``QueueBackend.ingest`` (one fsync on SQLite's WAL, one WAL flush on PostgreSQL),
then wakes every waiter. While a commit is in flight the next batch gathers, so under load the
fsync cost is shared by many messages instead of paid by each; with one client it costs what a
plain commit costs. Nothing is acknowledged before its commit returned. A batch that fails is
committed again message by message (one bad message must not cost the others their 250);
what still fails raises ``StorageUnavailable`` to its session (451 4.3.0).

After each commit ``on_commit`` runs: the node wakes its delivery workers there
(``Services.notify_enqueued``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from relay import metrics
from relay.queue.backend import open_backend
from relay.queue.groupcommit import GroupCommit
from relay.queue.model import NewEvent, NewMessage
from relay.store.db import Database

Item = NewMessage | NewEvent


class QueueWriter:
    def __init__(
        self,
        db: Database,
        *,
        on_commit: Callable[[], None] | None = None,
        max_batch: int = 512,
        commit_timeout: float = 30.0,
    ) -> None:
        self._backend = open_backend(db, "queue-writer")
        self._on_commit = on_commit
        self._started = 0.0
        self._group: GroupCommit[Item, None] = GroupCommit(
            self._commit,
            name="queue-writer",
            max_batch=max_batch,
            commit_timeout=commit_timeout,
            on_commit=self._committed,
        )

    async def start(self) -> None:
        self._group.start()

    async def submit(self, message: NewMessage) -> None:
        """Return once the message is committed; raise StorageUnavailable otherwise."""
        if message.variants and not message.variants.keys() <= set(message.recipients):
            raise ValueError("a variant for someone who is not a recipient of the message")
        await self._group.submit((message,))

    def record(self, event: NewEvent) -> None:
        """Queue an event for the next commit; nobody waits for it."""
        if not event.created_at:
            event.created_at = time.time()
        self._group.enqueue((event,))

    async def _commit(self, items: list[Item]) -> Sequence[None]:
        messages = [i for i in items if isinstance(i, NewMessage)]
        evs = [i for i in items if isinstance(i, NewEvent)] if len(messages) < len(items) else []
        self._started = time.perf_counter()
        await self._backend.ingest(messages, evs)
        return [None] * len(items)

    def _committed(self, items: list[Item], _results: Sequence[None]) -> None:
        metrics.QUEUE_COMMIT_SECONDS.observe(time.perf_counter() - self._started)
        messages = [i for i in items if isinstance(i, NewMessage)]
        if not messages:
            return
        metrics.QUEUE_COMMIT_BATCH.observe(len(messages))
        metrics.MESSAGES_ACCEPTED.inc(len(messages))
        metrics.RECIPIENTS_ACCEPTED.inc(sum(len(m.recipients) for m in messages))
        if self._on_commit is not None:
            self._on_commit()

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        await self._group.stop()
        await self._backend.close()
