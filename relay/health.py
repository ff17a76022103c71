"""Can this node accept mail? A storage probe, run in the background, read by /readyz.

Every ``interval`` seconds the main process makes one tiny write transaction and, on SQLite,
checks the free space where the database lives (room for a message of the maximum size twice
over: the message and its copy in the write-ahead log). /readyz answers from the last result,
so it costs no write per request, and says "not ready" when the probe failed or has not
finished for three intervals. The same loop sets ``relay_storage_up`` and
``relay_queue_oldest_age_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import structlog

from relay import metrics
from relay.datadir import sqlite_path
from relay.diagnose import reason
from relay.services import Services
from relay.store.repos import health as repo

log = structlog.get_logger("relay.health")


def free_space_problem(path: Path, needed: int) -> str | None:
    """None when the filesystem holding ``path`` has ``needed`` bytes free for this user."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"cannot check free space at {path}: {exc.strerror}"
    free = st.f_bavail * st.f_frsize
    if free < needed:
        return f"{free} bytes free where the database lives, {needed} needed"
    return None


class StorageProbe:
    """``start()`` probes once (so readiness is known before READY=1), then every
    ``interval`` seconds until ``stop()``."""

    def __init__(
        self,
        services: Services,
        *,
        interval: float = 5.0,
        timeout: float = 10.0,
        queue_age_every: int = 3,
        min_free_bytes: int | None = None,
    ) -> None:
        self.services = services
        self.interval = interval
        self.timeout = timeout
        self.queue_age_every = queue_age_every
        s = services.settings
        self.min_free = 2 * s.smtp.max_message_size if min_free_bytes is None else min_free_bytes
        database = sqlite_path(s)
        self.database_dir = database.parent if database is not None else None
        self.problem: str | None = "not probed yet"
        self.checked_at = 0.0
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def status(self) -> str | None:
        """None when ready; otherwise why not."""
        if time.monotonic() - self.checked_at > 3 * self.interval + self.timeout:
            return "storage probe has not finished recently"
        return self.problem

    async def start(self) -> None:
        await self.probe()
        self._task = asyncio.create_task(self._loop(), name="storage-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.probe()

    async def probe(self) -> None:
        self.runs += 1
        problem = None
        if self.database_dir is not None:
            problem = await asyncio.to_thread(free_space_problem, self.database_dir, self.min_free)
            if problem:
                metrics.STORAGE_PROBE_FAILURES.labels("free_space").inc()
        if problem is None:
            try:
                await asyncio.wait_for(self._write(), self.timeout)
            except Exception as exc:
                problem = f"database write failed: {reason(exc, self.timeout)}"
                metrics.STORAGE_PROBE_FAILURES.labels("write").inc()
        if problem != self.problem:
            if problem:
                log.error("storage cannot accept mail; /readyz answers 503", reason=problem)
            elif self.runs > 1:
                log.info("storage accepts writes again")
        self.problem = problem
        self.checked_at = time.monotonic()
        metrics.STORAGE_UP.set(0 if problem else 1)
        if problem is None and self.runs % self.queue_age_every == 1:
            await self._queue_age()

    async def _write(self) -> None:
        async with self.services.db.write() as conn:
            await repo.touch(conn)

    async def _queue_age(self) -> None:
        try:
            async with self.services.db.read() as conn:
                oldest = await asyncio.wait_for(repo.oldest_pending_created_at(conn), self.timeout)
        except Exception as exc:
            log.warning("queue age unavailable", error=reason(exc, self.timeout))
            return
        metrics.QUEUE_OLDEST_AGE.set(0 if oldest is None else max(0.0, time.time() - oldest))
