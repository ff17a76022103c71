"""Group commit of delivery outcomes (``GroupCommit``, like the ingest writer's).

Every finished delivery hands its per-recipient outcomes to ``record`` and waits; one task
writes everything pending in ONE transaction (``QueueBackend.record_outcomes``). While a commit
is in flight the next batch gathers, so under load many deliveries share one commit. A failed
commit is retried a few times, then each delivery's outcomes alone; what still fails is lost,
but those recipients keep their leases, which expire, so they are delivered again (at least
once). After a commit: the result metrics, one log line per outcome (the event's name, the
queue id, the recipient, the delivery server and its reply: a message's story in the log), and
each hard bounce's suppression published on the bus, so every node's SMTP side refuses the
address from then on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from relay import metrics
from relay.cache import LocalBus
from relay.directory import Topics
from relay.queue.backend import QueueBackend
from relay.queue.groupcommit import GroupCommit
from relay.queue.model import FINAL_STATES, DeliveryOutcome

log = structlog.get_logger("mta.recorder")

RETRY_DELAYS = (0.2, 1.0, 3.0)


class OutcomeRecorder:
    def __init__(
        self,
        queue: QueueBackend,
        bus: LocalBus | None = None,
        *,
        max_batch: int = 1000,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self.bus = bus
        # Called after a commit that scheduled a retry: the worker looks again when the next
        # recipient comes due (it may be sooner than its poll).
        self.on_retry = on_retry
        self._group: GroupCommit[DeliveryOutcome, None] = GroupCommit(
            self._commit,
            name="delivery-recorder",
            max_batch=max_batch,
            retry_delays=RETRY_DELAYS,
            on_commit=self._committed,
        )

    def start(self) -> asyncio.Task[None]:
        return self._group.start()

    async def record(self, outcomes: list[DeliveryOutcome]) -> None:
        """Return once the outcomes are committed; raise StorageUnavailable if they could not
        be. They are written even if the caller is cancelled meanwhile (shutdown)."""
        await self._group.submit(outcomes)

    def enqueue(self, outcomes: list[DeliveryOutcome]) -> None:
        """Queue outcomes for the next commit without waiting (a cancelled delivery's)."""
        self._group.enqueue(outcomes)

    async def _commit(self, outcomes: list[DeliveryOutcome]) -> Sequence[None]:
        await self.queue.record_outcomes(outcomes)
        return [None] * len(outcomes)

    async def _committed(self, outcomes: list[DeliveryOutcome], _: Sequence[None]) -> None:
        suppressed: set[str] = set()
        for o in outcomes:
            metrics.DELIVERY_RESULTS.labels(result=o.state).inc()
            data = o.data
            # Only what this outcome has: a deferral's next attempt, a failure's reason.
            extra: dict[str, Any] = {k: data[k] for k in ("next_attempt_at", "reason") if k in data}
            if o.suppress:
                extra["suppressed"] = True
            log.info(
                o.event,
                queue_id=o.message_id,
                rcpt=o.rcpt,
                attempt=o.attempts,
                server=data.get("server"),
                code=o.code,
                reply=o.response,
                seconds=data.get("seconds"),
                **extra,
            )
            if o.suppress:
                metrics.DELIVERY_SUPPRESSIONS.inc()
                suppressed.add(f"{o.user_id}:{o.rcpt.lower()}")
        if self.on_retry is not None and any(o.state not in FINAL_STATES for o in outcomes):
            self.on_retry()
        if self.bus is not None:
            for key in sorted(suppressed):
                await self.bus.publish(Topics.SUPPRESSION, key)

    async def stop(self) -> None:
        """Commit what is pending, then stop (a recorder that died already said so)."""
        await self._group.stop()
