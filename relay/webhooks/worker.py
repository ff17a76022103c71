"""The webhook worker of one process: claim due deliveries, POST them, record each attempt.

Self-contained (``start()``, ``stop(timeout)``), started by relay/server.py in each delivery
process (or the main process when it delivers itself), so a node builder can adopt it as is.

- **Claims** lease due deliveries (relay/webhooks/sql.py), each webhook up to its share of
  deliveries waiting here to be posted: ``SHARE_FACTOR`` times ``per_endpoint_concurrency``
  while it answers promptly, just ``per_endpoint_concurrency`` while a POST to it has been
  waiting more than ``SLOW_AFTER`` seconds. The deliveries of prompt webhooks waiting here are
  bounded too (twice ``max(concurrency, batch_size)``). A posted delivery stops counting while
  its result is written, so claiming goes on meanwhile. A claim happens when a quarter of the
  room is free, when a webhook that filled its share has half of it back, on a NOTIFY from the
  outbox trigger (PostgreSQL), or every ``poll_interval``.
- **Concurrency**: at most ``per_endpoint_concurrency`` POSTs in flight per webhook, and at most
  ``concurrency`` POSTs per process that are younger than ``SLOW_AFTER`` seconds: a POST that
  waits longer gives its process-wide slot back (it costs a socket, not work). So an endpoint
  that hangs or fails for days, or many of them, hold only their own slots and their own small
  share, never what the other webhooks need.
- **Leases** are renewed every third of ``lease_seconds`` for everything held, claimed deliveries
  that wait for a slot included; a worker that dies stops renewing and its deliveries come back
  within one lease. At start, the deliveries leased by this node's earlier incarnations
  (relay/leases.py: a process killed before it could release them) are released at once.
- **Attempts**: the body is built from the delivery row (the same bytes and ``webhook-id`` on
  every attempt), signed with the domain's current key (cached until the bus announces a
  change of the domain, so a rotated key signs the next attempt), POSTed
  (relay/webhooks/sender.py), and recorded through a batched writer: status, latency,
  response excerpt; delivered on 2xx, else retried with backoff (relay/webhooks/retry.py) or
  given up, which records a ``webhook-failed`` event.
- **Stop**: no more claims, deliveries waiting for a slot go back at once, POSTs in flight get
  ``timeout`` seconds to finish (or until ``hurry``), the rest are cancelled, known results are
  written, and every delivery still held is released for any worker to claim.
- **Upkeep**: backlog gauges, pending deliveries of deleted webhooks cancelled, finished
  deliveries and attempts older than ``retention_days`` deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from relay import metrics, retry
from relay.cache import MISSING, TTLCache
from relay.directory import Topics
from relay.leases import node_prefix, stale
from relay.services import Services
from relay.store.db import StorageUnavailable, asyncpg_dsn
from relay.webhooks import keys, payload
from relay.webhooks.batcher import Batcher
from relay.webhooks.payload import Delivery
from relay.webhooks.sender import INTERNAL_ERROR, Attempted, Sender
from relay.webhooks.store import DELIVERED, FAILED, PENDING, Recorded, open_store

# relay_webhook_deliveries_total's outcome of a finished delivery's state.
FINISHED_OUTCOME = {DELIVERED: "delivered", FAILED: "given_up"}

log = structlog.get_logger("relay.webhooks")

NOTIFY_CHANNEL = "relay_webhooks"  # NOTIFYed by the outbox trigger (migration 0004)
SHARE_FACTOR = 10
# A POST without an answer after this long is "slow": it gives back its process-wide slot and
# its webhook's share shrinks to what fills the webhook's own slots.
SLOW_AFTER = 2.0
KEY_TTL = 300.0
GAUGE_INTERVAL = 15.0
UPKEEP_INTERVAL = 60.0
TRANSIENT: tuple[type[BaseException], ...] = (StorageUnavailable, SQLAlchemyError, OSError)


class WebhookWorker:
    def __init__(self, services: Services, *, owner: str | None = None) -> None:
        self.services = services
        self.settings = services.settings.webhooks
        self.owner = owner or f"{services.node_id}/webhooks/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.store = open_store(services.db)
        self.sender = Sender(self.settings, services.settings.dns)
        self.recorder: Batcher[Recorded] = Batcher(self._write, name="webhook-recorder")
        s = self.settings
        self.hold_limit = max(s.concurrency, s.batch_size) * 2
        self._slots = asyncio.Semaphore(s.concurrency)
        self._endpoints: dict[int, _Endpoint] = {}
        # Every delivery leased here (renewed, released at stop); which of them are not posted
        # yet is counted per webhook in _endpoints.
        self._held: dict[int, Delivery] = {}
        self._unposted: set[int] = set()
        self._keys: TTLCache[int, bytes] = TTLCache(10_000, KEY_TTL)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()
        self._side: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._claiming: asyncio.Future[list[Delivery]] | None = None
        self._want_room = False
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # PostgreSQL: LISTEN is active

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # A domain change (regeneratesigningkey among them) drops its cached signing key.
        self.services.bus.subscribe(Topics.DOMAIN, self._forget_key)
        await self.sender.start()
        await self._reclaim()
        self.recorder.start()
        loops = [self._claim_loop, self._renew_loop, self._upkeep_loop]
        if not self.services.db.is_sqlite:
            loops.append(self._listen)
        self._side = [
            asyncio.create_task(_supervised(loop), name=f"webhook-{loop.__name__.strip('_')}")
            for loop in loops
        ]
        log.info(
            "webhook worker started",
            owner=self.owner,
            concurrency=self.settings.concurrency,
            per_endpoint=self.settings.per_endpoint_concurrency,
        )

    def wake(self) -> None:
        self._wake.set()

    async def _reclaim(self) -> None:
        """Release what earlier incarnations of this node held (see mta/worker.py)."""
        released = 0
        try:
            for owner in await self.store.lease_owners(node_prefix(self.owner)):
                if stale(owner, self.owner):
                    released += await self.store.release_owner(owner)
        except TRANSIENT as exc:
            log.warning("could not reclaim earlier webhook leases; they expire", error=repr(exc))
            return
        if released:
            log.info("reclaimed webhook leases of an earlier incarnation", released=released)

    async def stop(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(timeout, hurry), name="webhook-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self, bound: float, hurry: asyncio.Event | None) -> None:
        self._stopping = True
        claimer = self._side[0] if self._side else None
        if claimer is not None:
            claimer.cancel()
            await asyncio.gather(claimer, return_exceptions=True)
        if self._claiming is not None:
            # A claim that was under way when the loop stopped: its deliveries are released
            # below with the others, never left leased until they expire.
            late = await asyncio.gather(self._claiming, return_exceptions=True)
            if isinstance(late[0], list):
                for delivery in late[0]:
                    self._held.setdefault(delivery.id, delivery)
        # Deliveries still waiting for a slot give up their turn at once; POSTs in flight get
        # the bound to finish.
        for task in self._tasks - self._sending:
            task.cancel()
        if self._sending:
            log.info("waiting for webhook posts in flight", count=len(self._sending))
            await _wait(set(self._sending), bound, hurry)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Results already known are written before anything is released.
        await self.recorder.stop()
        released = 0
        try:
            released = await self.store.release(self.owner, list(self._held))
        except TRANSIENT as exc:
            log.error("could not release webhook leases; they expire", error=repr(exc))
        for task in self._side[1:]:
            task.cancel()
        await asyncio.gather(*self._side[1:], return_exceptions=True)
        await self.sender.close()
        await self.store.close()
        metrics.WEBHOOK_IN_FLIGHT.set(0)
        log.info("webhook worker stopped", released=released)

    # -- claiming ----------------------------------------------------------------------------

    def _waiting_prompt(self) -> int:
        """Deliveries waiting here for prompt webhooks (what the hold limit bounds)."""
        return sum(ep.unposted for ep in self._endpoints.values() if not ep.slow)

    async def _claim_loop(self) -> None:
        s = self.settings
        threshold = max(1, self.hold_limit // 4)
        default_share = s.per_endpoint_concurrency * SHARE_FACTOR
        while True:
            room = self.hold_limit - self._waiting_prompt()
            if room < threshold:
                self._room.clear()
                self._want_room = True
                await self._room.wait()
                continue
            limit = min(s.batch_size, room)
            self._wake.clear()
            self._room.clear()
            rooms = {w: max(ep.share - ep.unposted, 0) for w, ep in self._endpoints.items()}
            now = time.time()
            # Shielded: stop() cancels this loop, but a claim the database already made must
            # still be known here, so that its deliveries are released (see _stop).
            self._claiming = asyncio.ensure_future(
                self.store.claim(
                    self.owner, now + s.lease_seconds, now, default_share, rooms, limit
                )
            )
            try:
                claimed = await asyncio.shield(self._claiming)
            except TRANSIENT as exc:
                log.warning("claiming webhook deliveries failed; retrying", error=repr(exc))
                await self._idle(s.poll_interval)
                continue
            got: dict[int, int] = {}
            for delivery in claimed:
                self._hold(delivery)
                got[delivery.webhook_id] = got.get(delivery.webhook_id, 0) + 1
            # A webhook whose room this claim filled (or had none) has more waiting: claim
            # again for it as soon as half its share is back (see _posted).
            for webhook_id, ep in self._endpoints.items():
                ep.saturated = got.get(webhook_id, 0) >= rooms.get(webhook_id, default_share)
            if len(claimed) < limit:
                await self._idle(s.poll_interval)

    async def _idle(self, seconds: float) -> None:
        """Until woken (NOTIFY), room was made for a webhook that had filled its share, or
        ``seconds`` passed."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._room.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _endpoint(self, webhook_id: int) -> _Endpoint:
        ep = self._endpoints.get(webhook_id)
        if ep is None:
            ep = self._endpoints[webhook_id] = _Endpoint(self.settings.per_endpoint_concurrency)
        return ep

    def _hold(self, delivery: Delivery) -> None:
        self._held[delivery.id] = delivery
        self._unposted.add(delivery.id)
        self._endpoint(delivery.webhook_id).unposted += 1
        task = asyncio.create_task(self._run_one(delivery), name=f"webhook-{delivery.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _posted(self, delivery: Delivery) -> None:
        """Posted (or abandoned): it no longer counts against the claims."""
        if delivery.id not in self._unposted:
            return
        self._unposted.discard(delivery.id)
        ep = self._endpoint(delivery.webhook_id)
        ep.unposted -= 1
        if ep.unposted <= 0 and ep.idle:
            del self._endpoints[delivery.webhook_id]
        # Wake the claim loop only when a claim is worth it: a webhook that had filled its
        # share has half of it back, or the loop waits for room and a quarter is free.
        if ep.saturated and ep.unposted <= ep.share // 2:
            ep.saturated = False
            self._room.set()
        self._check_room()

    def _check_room(self) -> None:
        if self._want_room and self.hold_limit - self._waiting_prompt() >= self.hold_limit // 4:
            self._want_room = False
            self._room.set()

    def _forget(self, delivery: Delivery) -> None:
        """Its result is written (or will never be: its lease then expires)."""
        self._posted(delivery)
        self._held.pop(delivery.id, None)

    # -- one delivery --------------------------------------------------------------------------

    async def _run_one(self, delivery: Delivery) -> None:
        """Wait for a slot, POST, record. Cancelled at stop (the delivery stays held, and
        stop() releases it); anything else that goes wrong lets the lease expire, so the
        delivery is claimed again (at least once)."""
        ep = self._endpoint(delivery.webhook_id)
        try:
            async with ep.sem:
                await self._slots.acquire()
                slot = _Slot(self._slots)
                # Still waiting after SLOW_AFTER: the process-wide slot goes back, and the
                # webhook counts as slow (a small share) until its slow POSTs end.
                timer = asyncio.get_running_loop().call_later(SLOW_AFTER, self._slow, ep, slot)
                task = asyncio.current_task()
                assert task is not None
                self._sending.add(task)
                try:
                    item = await self._attempt(delivery)
                finally:
                    timer.cancel()
                    if slot.released:
                        ep.slow -= 1
                    else:
                        slot.release()
                    self._sending.discard(task)
            self._posted(delivery)
            await self.recorder.submit([item])
        except TRANSIENT as exc:
            log.error("webhook attempt not recorded; its lease expires", error=repr(exc))
        except Exception:
            log.exception("webhook delivery failed", delivery_id=delivery.id)
        else:
            self._forget(delivery)
            return
        self._forget(delivery)

    async def _write(self, items: list[Recorded]) -> None:
        """The recorder's batch: written, then counted in the metrics. Counting a batch at a
        time keeps the multiprocess metric files (a lock and a write per change) off the
        per-POST path, which they had been a tenth of."""
        await self.store.record(self.owner, items)
        try:
            self._count(items)
        except Exception:  # never a reason to write the batch again (the recorder would)
            log.exception("webhook metrics not counted")

    def _count(self, items: list[Recorded]) -> None:
        metrics.WEBHOOK_IN_FLIGHT.set(len(self._sending))
        results = Counter(item.attempted.result for item in items)
        for result, n in results.items():
            metrics.WEBHOOK_ATTEMPTS.labels(result=result).inc(n)
        for item in items:
            metrics.WEBHOOK_ATTEMPT_SECONDS.observe(item.attempted.latency)
        finished = Counter(item.state for item in items if item.state != PENDING)
        for state, n in finished.items():
            metrics.WEBHOOK_DELIVERIES.labels(outcome=FINISHED_OUTCOME.get(state, state)).inc(n)

    def _slow(self, ep: _Endpoint, slot: _Slot) -> None:
        slot.release()
        ep.slow += 1
        self._check_room()

    def _forget_key(self, domain_id: str) -> None:
        with contextlib.suppress(ValueError):
            self._keys.pop(int(domain_id))

    async def _secret(self, domain_id: int) -> bytes:
        """The HMAC key of a domain: cached until the domain changes (the bus says so; the
        TTL is a backstop), so a rotated key signs the very next attempt."""
        hit = self._keys.get(domain_id)
        if hit is not MISSING:
            return bytes(hit)
        key = await keys.current_key(self.services.db, self.services.box, domain_id)
        secret = keys.secret_bytes(key)
        self._keys.set(domain_id, secret)
        return secret

    async def _attempt(self, d: Delivery) -> Recorded:
        started = time.time()
        try:
            secret = await self._secret(d.domain_id)
        except (LookupError, ValueError) as exc:
            # The domain is gone, or its key cannot be opened (the key-encryption key changed):
            # an attempt that failed for a reason of ours, retried like any other.
            attempted = Attempted(INTERNAL_ERROR, None, 0.0, f"signing key: {exc}")
        else:
            body = payload.body(d)
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": d.msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": keys.signature(secret, d.msg_id, timestamp, body),
            }
            attempted = await self.sender.post(d.url, headers, body)
        number = d.attempts + 1
        now = time.time()
        if attempted.ok:
            return Recorded(d, attempted, number, DELIVERED, now, started)
        decision = retry.after_failure(
            number, d.created_at, now, self.settings, max_attempts=self.settings.max_attempts
        )
        if decision.give_up:
            log.warning(
                "webhook delivery given up",
                webhook_id=d.webhook_id,
                delivery_id=d.id,
                attempts=number,
                error=attempted.error,
            )
            return Recorded(d, attempted, number, FAILED, now, started)
        return Recorded(d, attempted, number, PENDING, decision.next_attempt_at, started)

    # -- side tasks ----------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.lease_seconds / 3)
            ids = list(self._held)
            if not ids:
                continue
            try:
                await self.store.renew(self.owner, ids, time.time() + s.lease_seconds)
            except TRANSIENT as exc:
                log.warning("renewing webhook leases failed", error=repr(exc))

    async def _upkeep_loop(self) -> None:
        next_upkeep = 0.0
        while True:
            try:
                count, oldest = await self.store.backlog()
                metrics.WEBHOOK_BACKLOG.set(count)
                metrics.WEBHOOK_IN_FLIGHT.set(len(self._sending))
                metrics.WEBHOOK_OLDEST_SECONDS.set(max(time.time() - oldest, 0) if oldest else 0)
                if time.monotonic() >= next_upkeep:
                    next_upkeep = time.monotonic() + UPKEEP_INTERVAL
                    await self._upkeep()
            except TRANSIENT as exc:
                log.warning("webhook upkeep failed", error=repr(exc))
            await asyncio.sleep(GAUGE_INTERVAL)

    async def _upkeep(self) -> None:
        cancelled = await self.store.cancel_orphans(time.time())
        if cancelled:
            log.info("cancelled deliveries of deleted webhooks", count=cancelled)
        cutoff = time.time() - self.settings.retention_days * 86400
        # In bounded steps: each is one short transaction, so writers are never held long.
        for _ in range(100):
            if self._stopping or await self.store.purge(cutoff) == 0:
                break

    async def _listen(self) -> None:
        """LISTEN for the outbox trigger's NOTIFY on a dedicated connection; reconnect."""
        import asyncpg

        dsn = asyncpg_dsn(self.services.db.url)
        delay = 0.5
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_args: self._wake.set())
                self._wake.set()  # what was queued while we were not listening
                self.listening.set()
                delay = 0.5
                await lost.wait()
                log.warning("webhook LISTEN connection lost; reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhook LISTEN unavailable; polling meanwhile", error=repr(exc))
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _supervised(loop: Callable[[], Awaitable[None]]) -> None:
    """Run a side loop for good: a bug that escapes it is logged and the loop starts again
    (after a pause), rather than leaving webhooks silently unposted."""
    delay = 1.0
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook worker loop failed; restarting it", loop=loop.__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


async def _wait(tasks: set[asyncio.Task[None]], bound: float, hurry: asyncio.Event | None) -> None:
    """Until ``tasks`` are done, ``bound`` seconds passed or ``hurry`` is set."""
    waiters: set[asyncio.Future[Any]] = set(tasks)
    hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
    if hurried is not None:
        waiters.add(hurried)
    deadline = time.monotonic() + bound
    try:
        while any(not t.done() for t in tasks) and not (hurry is not None and hurry.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            waiters = {w for w in waiters if not w.done()}
    finally:
        if hurried is not None:
            hurried.cancel()


class _Endpoint:
    """One webhook's state in this worker."""

    __slots__ = ("cap", "saturated", "sem", "slow", "unposted")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sem = asyncio.Semaphore(cap)
        self.unposted = 0  # claimed here, not posted yet
        self.slow = 0  # POSTs in flight for longer than SLOW_AFTER
        self.saturated = False  # reached its share at the last claim

    @property
    def share(self) -> int:
        return self.cap if self.slow else self.cap * SHARE_FACTOR

    @property
    def idle(self) -> bool:
        return not self.slow and not self.sem.locked() and self.unposted <= 0


class _Slot:
    """A process-wide POST slot, released once (at the answer, or early when slow)."""

    __slots__ = ("released", "sem")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self.sem = sem
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.sem.release()
