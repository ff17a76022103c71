"""Keeps the event log in shape while the relay runs: partitions made ahead of time, the
rollups' per-statement rows folded, old events dropped (``events.retention_days``).

One object with ``start()`` and ``stop(timeout)``, run by the main process of a node. Several
nodes may each run one: partition work takes a PostgreSQL advisory lock (the others skip that
round), and folding and batch deletes are safe to run concurrently. A step that fails (the
database is away, a lock was not granted within the short timeout) is logged and tried again
at its next round; it never stops the relay.

The SQL is in relay/store/eventlog.py; docs/events.md ("Storage") describes the layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from relay.config import EventsSettings
from relay.store import eventlog
from relay.store.db import Database

log = structlog.get_logger("relay.events")

# Seconds between foldings of the rollups (PostgreSQL), or countings of events a foreign writer
# left uncounted (SQLite: relay/store/rollups.py).
FOLD_INTERVAL = 10.0
UPKEEP_INTERVAL = 3600.0  # seconds between partition and retention rounds
RETENTION_DELAY = 300.0  # the first retention round waits this long after start


class EventMaintenance:
    def __init__(
        self,
        db: Database,
        settings: EventsSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Make today's and the coming days' partitions now (before the node accepts mail, so
        its events land in their own partitions), then keep at it in the background."""
        await self._step("partitions", self.make_partitions)
        self._task = asyncio.create_task(self._run(), name="event-maintenance")

    async def stop(self, timeout: float = 10.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout)

    async def run_once(self) -> dict[str, Any]:
        """Every step once, in order (tests, and `relay` tooling)."""
        return {
            "partitions": await self.make_partitions(),
            "retention": await self.apply_retention(),
            "folded": await self.fold(),
        }

    async def make_partitions(self) -> list[str]:
        today = eventlog.day_of(self.clock())
        made = await eventlog.ensure_partitions(
            self.db, today, today + self.settings.partitions_ahead_days
        )
        if made:
            log.info("event partitions made", partitions=made)
        return made

    def cutoff(self) -> float | None:
        """Events before this time are past retention (start of a UTC day); None: keep all."""
        days = self.settings.retention_days
        if days <= 0:
            return None
        return float((eventlog.day_of(self.clock()) - days) * eventlog.DAY)

    async def apply_retention(self) -> dict[str, Any]:
        cutoff = self.cutoff()
        if cutoff is None:
            return {}
        dropped = await eventlog.drop_partitions_before(self.db, cutoff)
        deleted = await eventlog.delete_events_before(self.db, cutoff)
        bookkeeping = await eventlog.delete_bookkeeping_before(self.db, cutoff)
        if dropped or deleted:
            log.info(
                "old events removed",
                before=cutoff,
                partitions_dropped=dropped,
                events_deleted=deleted,
                bookkeeping_deleted=bookkeeping,
            )
        return {"dropped": dropped, "deleted": deleted, "bookkeeping": bookkeeping}

    async def fold(self) -> int:
        return await eventlog.fold_rollups(self.db)

    async def _run(self) -> None:
        next_upkeep = time.monotonic() + RETENTION_DELAY
        while True:
            await asyncio.sleep(FOLD_INTERVAL)
            await self._step("fold", self.fold)
            if time.monotonic() >= next_upkeep:
                next_upkeep = time.monotonic() + UPKEEP_INTERVAL
                await self._step("partitions", self.make_partitions)
                await self._step("retention", self.apply_retention)

    async def _step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "event maintenance step failed; retried at its next round",
                step=name,
                error=f"{type(exc).__name__}: {exc}",
            )
