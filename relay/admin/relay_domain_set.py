"""The set of Enabled gateway domains, in memory: what MX servers ask about on every message.

``/api/v1/inbound-relay-domain-check`` answers from this set, never from the database. It is
loaded at start, reloaded when ``Topics.RELAY_DOMAINS`` is published (by any node, through the
bus) or the bus reconnects, and every ``refresh_interval`` seconds as a backstop. Reloads are
coalesced: a burst of invalidations costs one query. A lookup made while a reload this node
asked for is running waits for it (bounded), so a change made through this node's API is
visible to the next check on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from relay.directory import Topics
from relay.services import Services
from relay.store.repos import domains as repo

log = structlog.get_logger("relay.admin.relay_domain_set")

# How long a check waits for a pending reload before answering from the previous set.
_WAIT_FOR_RELOAD = 2.0


class RelayDomains:
    def __init__(self, services: Services, refresh_interval: float = 60.0) -> None:
        self.services = services
        self.refresh_interval = refresh_interval
        self._names: frozenset[str] = frozenset()
        self._wanted = asyncio.Event()
        # Resolved when the reload asked for last (_pending) / the running one (_inflight) ends.
        self._pending: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        # time.monotonic() of the last successful load (0: never); the Postfix lookups
        # (mta/postfix) answer "cannot tell" when it is too old.
        self.loaded_at = 0.0

    def __len__(self) -> int:
        return len(self._names)

    async def start(self) -> None:
        """Load the set (raises if the database cannot be read) and keep it fresh."""
        await self._load()
        self.services.bus.subscribe(Topics.RELAY_DOMAINS, lambda _key: self.invalidate())
        self.services.bus.on_reset(self.invalidate)
        self._task = asyncio.create_task(self._run(), name="relay-domains")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def invalidate(self) -> None:
        """Ask for a reload (synchronous: called from bus callbacks)."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_future()
        self._wanted.set()

    async def contains(self, domain: str) -> bool:
        pending = self._pending or self._inflight
        if pending is not None and not pending.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending), _WAIT_FOR_RELOAD)
        return domain in self._names

    async def _load(self) -> None:
        async with self.services.db.read() as conn:
            names = await repo.enabled_names(conn)
        self._names = frozenset(n.lower() for n in names)
        self.reloads += 1
        self.loaded_at = time.monotonic()

    async def _run(self) -> None:
        delay = self.refresh_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), delay)
            self._wanted.clear()
            pending, self._pending = self._pending, None
            self._inflight = pending
            try:
                await self._load()
                delay = self.refresh_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep answering from the previous set; retry soon.
                log.warning("relay domain reload failed", error=type(exc).__name__)
                delay = min(5.0, self.refresh_interval)
            finally:
                self._inflight = None
                if pending is not None and not pending.done():
                    pending.set_result(None)
