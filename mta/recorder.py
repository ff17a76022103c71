"""Group commit of delivery outcomes, like the ingest writer's group commit of messages.

Every finished delivery hands its per-recipient outcomes to ``record`` and waits; one task
writes everything pending in ONE transaction (``DeliveryStore.record_outcomes``). While a
commit is in flight the next batch gathers, so under load many deliveries share one commit.
A failed commit is retried a few times; if it still fails the outcomes are lost, but the
recipients keep their leases, which expire, so they are delivered again (at least once).
"""

from __future__ import annotations

import asyncio

import structlog

from relay import metrics
from relay.queue.delivery import DeliveryStore
from relay.queue.model import DeliveryOutcome

log = structlog.get_logger("mta.recorder")

RETRY_DELAYS = (0.2, 1.0, 3.0)


class OutcomeRecorder:
    def __init__(self, store: DeliveryStore, *, max_batch: int = 1000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[list[DeliveryOutcome], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="delivery-recorder")
        return self._task

    async def record(self, outcomes: list[DeliveryOutcome]) -> None:
        """Return once the outcomes are committed; raise if they could not be."""
        if not outcomes:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved even when the waiter was cancelled (no "exception never retrieved").
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append((outcomes, fut))
        self._wake.set()
        # shield: a delivery cancelled at shutdown still gets its outcomes written.
        await asyncio.shield(fut)

    def enqueue(self, outcomes: list[DeliveryOutcome]) -> None:
        """Queue outcomes for the next commit without waiting (a cancelled delivery's)."""
        if outcomes:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending.append((outcomes, fut))
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[tuple[list[DeliveryOutcome], asyncio.Future[None]]] = []
                size = 0
                while self._pending and (not batch or size < self.max_batch):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(
        self, batch: list[tuple[list[DeliveryOutcome], asyncio.Future[None]]]
    ) -> None:
        outcomes = [o for group, _ in batch for o in group]
        error: Exception | None = None
        for delay in (0.0, *RETRY_DELAYS):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self.store.record_outcomes(outcomes)
            except Exception as exc:  # storage trouble: retried, then reported to the waiters
                error = exc
                log.warning("recording outcomes failed", outcomes=len(outcomes), error=repr(exc))
                continue
            error = None
            break
        if error is None:
            for o in outcomes:
                metrics.DELIVERY_RESULTS.labels(result=o.state).inc()
                if o.suppress:
                    metrics.DELIVERY_SUPPRESSIONS.inc()
        else:
            log.error(
                "outcomes not recorded; their leases will expire and they are retried",
                outcomes=len(outcomes),
            )
        for _, fut in batch:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    async def stop(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # A recorder that died already said so (the worker watches it); don't raise here.
            await asyncio.gather(self._task, return_exceptions=True)
