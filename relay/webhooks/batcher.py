"""Batched writes of attempt results: callers hand items and wait; one task writes everything
pending in one ``flush`` call (one transaction).

This is the group-commit pattern of the queue writer and the delivery recorder, with one
addition: nobody is waiting on a webhook result the way an SMTP client waits for its 250, so
after the first item arrives the writer lingers a few milliseconds to gather more, which keeps
the outbox's commits (each one an fsync on SQLite) few under load. The interface (``submit``,
``start``, ``stop``) is what the project's shared GroupCommit primitive offers, so this class
can be replaced by it without touching the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("relay.webhooks")

T = TypeVar("T")
RETRY_DELAYS = (0.2, 1.0, 3.0)


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        name: str,
        max_batch: int = 1000,
        linger: float = 0.05,
    ) -> None:
        self._flush = flush
        self.name = name
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self._task

    async def submit(self, items: list[T]) -> None:
        """Return once the items are written; raise the storage error if they could not be."""
        if not items:
            return
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut: asyncio.Future[None] = loop.create_future()
            # Retrieved even if the waiter was cancelled (no "exception never retrieved").
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending.append((item, fut))
            futures.append(fut)
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        # shield: a result handed over at shutdown is still written. (One item, the worker's
        # case: its own future, without gather's.)
        await asyncio.shield(futures[0] if len(futures) == 1 else asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.linger and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.linger)
            self._wake.clear()
            self._full.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                self._pending = self._pending[self.max_batch :]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        error = await self._write([item for item, _ in batch], retry=True)
        if error is not None and len(batch) > 1:
            # One bad item must not cost the others their write: each alone, once.
            for item, fut in batch:
                _settle(fut, await self._write([item], retry=False))
            return
        for _, fut in batch:
            _settle(fut, error)

    async def _write(self, items: list[T], *, retry: bool) -> Exception | None:
        error: Exception | None = None
        for delay in (0.0, *RETRY_DELAYS) if retry else (0.0,):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._flush(items)
            except Exception as exc:  # storage trouble: retried, then reported to the waiters
                error = exc
                log.warning("writing a batch failed", batch=self.name, error=repr(exc))
                continue
            return None
        return error

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _settle(fut: asyncio.Future[None], error: Exception | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
