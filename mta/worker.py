"""The delivery worker of one node: claim due recipients, deliver, record, repeat.

One claim loop leases due recipients (``QueueBackend.claim``) only while there is room under
``delivery.concurrency`` messages in flight, and starts one task per message. It wakes at once
when this node's queue writer commits (``services.on_enqueued``), on PostgreSQL also when any
node commits (``QueueBackend.listen``: LISTEN on the channel the group commit NOTIFYs), when
the earliest pending recipient comes due (``QueueBackend.next_scheduled``, asked when it goes
idle, and again after each commit of a deferral: a message scheduled on any node, or before a
restart, and a retry sooner than the poll go out on time without polling faster), and
otherwise every ``poll_interval``. Outcomes go
through a group commit (``OutcomeRecorder``). Storage errors (``mta.errors.STORAGE_ERRORS``) are
retried on both backends, never fatal.

Leases are short (``delivery.lease_seconds``, 30 s) and renewed every third of that for the
recipients still in flight, until their outcome is written; so a node that dies frees its work
for the others within one lease. At start the worker releases the leases of this node's
earlier incarnations (``relay.leases.stale``: a process that died, e.g. under SIGKILL) so a
restart delivers them at once. A delivery must finish within ``delivery.attempt_timeout`` from
its claim; what does not finish in time is deferred.

Stop (procrastinate/uvicorn style): stop claiming, let in-flight deliveries finish within the
bound (or until ``hurry``), cancel the rest, write the outcomes already known, then release
this node's remaining leases so any node can claim them at once. A side task (claim loop,
recorder, pool reaper, LISTEN) that dies stops the worker loudly (critical log, the
``relay_delivery_worker_up`` gauge at 0, ``error`` set) instead of leaving it half-working.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from mta.attempt import MessageAttempt
from mta.errors import STORAGE_ERRORS
from mta.pool import ConnectionPool, client_tls_context
from mta.recorder import OutcomeRecorder
from mta.returnpath import ReturnPath
from mta.routing import Router
from relay import metrics
from relay.leases import node_prefix, stale
from relay.queue.backend import open_backend
from relay.queue.model import QueuedMessage
from relay.services import Services

log = structlog.get_logger("mta.worker")

# After a failed claim: 0.5 s, doubling while it keeps failing, at most ``poll_interval``. Not
# the poll interval itself: that is how long an idle node may go without asking, and one
# "database is locked" must not make it miss a scheduled message by that long.
FIRST_RETRY = 0.5


class DeliveryService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings.delivery
        self.owner = services.node_id
        # One connection to the queue for claims, loads, outcomes and releases.
        self.queue = open_backend(services.db, "delivery")
        self.router = Router(services.directory)
        self.recorder = OutcomeRecorder(self.queue, services.bus, on_retry=self.wake)
        # VERP MAIL FROM and the delivery servers' From rules (mta/returnpath.py).
        self.return_path = ReturnPath(
            services.db, services.box, services.settings, services.directory
        )
        self.pool: ConnectionPool | None = None
        # Set when a side task died: why the worker stopped (and `failed` is set).
        self.error: BaseException | None = None
        self.failed = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # The recipients leased here whose outcome is not written yet: their leases are renewed.
        self._leased: dict[asyncio.Task[None], list[int]] = {}
        self._side: list[asyncio.Task[Any]] = []
        self._claimer: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # wake-ups from other nodes work (PostgreSQL LISTEN)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # Loading the CA store reads files, and the FQDN lookup may ask DNS: not on the loop.
        tls = await asyncio.to_thread(client_tls_context, s.tls_verify, s.tls_ca_file)
        hostname = await asyncio.to_thread(lambda: self.services.settings.hostname)
        self.pool = ConnectionPool(s, tls, hostname)
        await self.return_path.start()  # loads the shared VERP key
        await self._reclaim()
        self._watch(self.recorder.start())
        self._watch(asyncio.create_task(self.pool.run_reaper(), name="delivery-pool-reaper"))
        listen = self.queue.listen(self._wake.set, self.listening)
        self._watch(asyncio.create_task(listen, name="delivery-listen"))
        self._watch(asyncio.create_task(self._renew_loop(), name="delivery-renew"))
        self._claimer = asyncio.create_task(self._claim_loop(), name="delivery-claim")
        self._watch(self._claimer)
        self.services.on_enqueued.append(self.wake)
        metrics.DELIVERY_WORKER_UP.set(1)
        log.info("delivery worker started", owner=self.owner, concurrency=s.concurrency)

    def wake(self) -> None:
        self._wake.set()

    # relay/server.py's interface: a bound in seconds, and an event that cuts the wait short.
    async def stop(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(timeout, hurry), name="delivery-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self, bound: float, hurry: asyncio.Event | None) -> None:
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.services.on_enqueued.remove(self.wake)
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
        if self._inflight:
            log.info("waiting for deliveries in flight", count=len(self._inflight))
            await self._wait_inflight(bound, hurry)
        cancelled = len(self._inflight)
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        # Outcomes already known (including those of cancelled deliveries) are written first,
        # so released leases never hide a delivery that happened.
        await self.recorder.stop()
        released = 0
        try:
            released = await self.queue.release(self.owner)
        except STORAGE_ERRORS as exc:
            metrics.STORAGE_ERRORS.labels(operation="release").inc()
            log.error("could not release leases; they expire on their own", error=repr(exc))
        for task in self._side:
            task.cancel()
        await asyncio.gather(*self._side, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
        await self.return_path.close()
        await self.queue.close()
        metrics.DELIVERY_WORKER_UP.set(0)
        metrics.DELIVERY_IN_FLIGHT.set(0)
        log.info("delivery worker stopped", cancelled=cancelled, leases_released=released)

    async def _wait_inflight(self, bound: float, hurry: asyncio.Event | None) -> None:
        waiters: set[asyncio.Future[Any]] = set(self._inflight)
        hurried: asyncio.Task[bool] | None = None
        if hurry is not None:
            hurried = asyncio.create_task(hurry.wait())
            waiters.add(hurried)
        deadline = time.monotonic() + bound
        try:
            while self._inflight and not (hurry is not None and hurry.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait(
                    waiters | set(self._inflight), timeout=left, return_when="FIRST_COMPLETED"
                )
                waiters = {w for w in waiters if not w.done()}
        finally:
            if hurried is not None:
                hurried.cancel()

    def _watch(self, task: asyncio.Task[Any]) -> None:
        self._side.append(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            error: BaseException = RuntimeError(f"{task.get_name()} was cancelled")
        else:
            error = task.exception() or RuntimeError(f"{task.get_name()} returned")
        self.error = error
        self.failed.set()
        log.critical(
            "delivery worker side task died; stopping delivery on this node",
            task=task.get_name(),
            error=repr(error),
            exc_info=error,
        )
        metrics.DELIVERY_WORKER_UP.set(0)
        self._stop_task = asyncio.create_task(
            self._stop(self.settings.stop_timeout, None), name="delivery-stop"
        )

    # -- leases --------------------------------------------------------------------------

    async def _reclaim(self) -> None:
        """Release the leases of this node's earlier incarnations, so a restart after a crash
        delivers their recipients now, not when the leases run out (at least once: what was
        in flight when the process died is delivered again)."""
        try:
            owners = await self.queue.lease_owners(node_prefix(self.owner))
            released = 0
            for owner in owners:
                if stale(owner, self.owner):
                    released += await self.queue.release(owner)
        except STORAGE_ERRORS as exc:
            metrics.STORAGE_ERRORS.labels(operation="release").inc()
            log.warning("could not reclaim earlier leases; they expire", error=repr(exc))
            return
        if released:
            log.info("reclaimed leases of an earlier incarnation", released=released)

    async def _renew_loop(self) -> None:
        """Keep the leases of deliveries in flight (and of outcomes not yet written) alive."""
        s = self.settings
        while True:
            await asyncio.sleep(s.lease_seconds / 3)
            ids = [i for held in self._leased.values() for i in held]
            if not ids:
                continue
            try:
                await self.queue.renew(self.owner, ids, time.time() + s.lease_seconds)
            except STORAGE_ERRORS as exc:
                # Tried again in a third of a lease; if storage stays away for longer, the
                # leases run out and another worker may deliver these again (at least once).
                metrics.STORAGE_ERRORS.labels(operation="renew").inc()
                log.warning("renewing leases failed", error=repr(exc))

    # -- claiming ------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        s = self.settings
        # Claim again only when a quarter of the slots is free: fewer, larger claims.
        threshold = max(1, min(s.concurrency, s.batch_size) // 4)
        next_gauge = 0.0
        failures = 0
        while True:
            if time.monotonic() >= next_gauge:
                await self._update_gauge()
                next_gauge = time.monotonic() + max(s.poll_interval, 1.0)
            free = s.concurrency - len(self._inflight)
            if self._inflight and free < threshold:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            limit = min(s.batch_size, free)
            self._wake.clear()
            try:
                claimed = await self.queue.claim(self.owner, limit, s.lease_seconds)
            except STORAGE_ERRORS as exc:
                metrics.STORAGE_ERRORS.labels(operation="claim").inc()
                log.warning("claiming failed; retrying", error=repr(exc))
                failures += 1
                await self._idle(_retry_after(failures, s.poll_interval))
                continue
            if claimed:
                deadline = time.monotonic() + s.attempt_timeout
                try:
                    messages = await self.queue.load(claimed)
                except STORAGE_ERRORS as exc:
                    metrics.STORAGE_ERRORS.labels(operation="load").inc()
                    log.warning("loading claimed messages failed", error=repr(exc))
                    with contextlib.suppress(*STORAGE_ERRORS):
                        await self.queue.release(self.owner, [c.id for c in claimed])
                    failures += 1
                    await self._idle(_retry_after(failures, s.poll_interval))
                    continue
                for message in messages:
                    self._spawn(message, deadline)
            failures = 0
            if len(claimed) < limit:
                await self._idle(await self._idle_seconds())

    async def _idle_seconds(self) -> float:
        """``poll_interval``, or less when a scheduled recipient comes due sooner. Not asked
        while a wake-up is pending (under load every commit wakes the loop: no extra query)."""
        poll = self.settings.poll_interval
        if self._wake.is_set():
            return poll
        now = time.time()
        try:
            due = await self.queue.next_scheduled(now)
        except STORAGE_ERRORS as exc:
            metrics.STORAGE_ERRORS.labels(operation="next_scheduled").inc()
            log.warning("next scheduled time unavailable", error=repr(exc))
            return _retry_after(1, poll)  # not the poll: a scheduled message may be due sooner
        return poll if due is None else min(poll, max(0.0, due - now))

    async def _idle(self, seconds: float) -> None:
        """Sleep until woken (new mail committed) or ``seconds`` passed.

        ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` loses a cancellation
        that arrives as the wake-up completes, and stop() would wait for this loop forever."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _update_gauge(self) -> None:
        try:
            depth = await self.queue.pending()
        except STORAGE_ERRORS as exc:
            metrics.STORAGE_ERRORS.labels(operation="depth").inc()
            log.warning("queue depth unavailable", error=repr(exc))
            return
        metrics.QUEUE_DEPTH.set(depth.pending)
        metrics.QUEUE_SCHEDULED.set(depth.scheduled)
        metrics.QUEUE_HELD.set(depth.held)

    # -- delivering -----------------------------------------------------------------------

    def _spawn(self, message: QueuedMessage, deadline: float) -> None:
        task = asyncio.create_task(self._deliver(message, deadline), name=f"deliver-{message.id}")
        self._inflight.add(task)
        self._leased[task] = [r.id for r in message.recipients]
        metrics.DELIVERY_IN_FLIGHT.inc()
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._leased.pop(task, None)
        metrics.DELIVERY_IN_FLIGHT.dec()
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _deliver(self, message: QueuedMessage, deadline: float) -> None:
        assert self.pool is not None
        attempt = MessageAttempt(message, self.pool, self.settings, self.return_path)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                route = await self.router.route(message.user_id)
                if not route.servers:
                    log.warning("no route", message_id=message.id, reason=route.reason)
                await attempt.run(route)
        except TimeoutError:
            attempt.interrupted("delivery did not finish within delivery.attempt_timeout")
        except asyncio.CancelledError:
            # Shutdown: keep what the servers already answered; the rest is released.
            known = attempt.outcomes(only_replied=True)
            if known:
                self.recorder.enqueue(known)
            raise
        except Exception as exc:
            log.exception("delivery attempt failed", message_id=message.id)
            attempt.interrupted(f"internal error: {type(exc).__name__}")
        try:
            await self.recorder.record(attempt.outcomes())
        except STORAGE_ERRORS as exc:
            log.error("outcome not recorded", message_id=message.id, error=repr(exc))


def _loop_time(monotonic_deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock (they may differ)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _retry_after(failures: int, poll_interval: float) -> float:
    """Seconds to wait after the ``failures``-th failed claim in a row."""
    return min(FIRST_RETRY * 2 ** min(failures - 1, 16), poll_interval)
