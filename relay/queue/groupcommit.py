"""Group commit: many callers, one transaction per batch.

Callers hand over items (and usually wait); one task takes everything pending, commits it with
a single call of ``commit(items)``, and wakes every waiter with its own result. While a commit
is in flight the next batch gathers, so under load the fsync (SQLite's WAL, PostgreSQL's WAL
flush) is shared by many items instead of paid by each; with one caller it costs what a plain
commit costs. Nothing is reported committed before ``commit`` returned.

Failures: a failed batch is retried after ``retry_delays``; if it still fails and it holds
several submissions, each submission is committed alone (one bad row must not cost the others
their commit), all within one ``commit_timeout``; what still fails is reported to its waiters.

After a commit, ``on_commit(items, results)`` runs (a plain function or a coroutine function:
metrics, wake-ups, cache invalidations on the bus) before the waiters learn the result; its
failure is logged and never undoes or repeats the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from relay import metrics
from relay.store.db import StorageUnavailable

log = structlog.get_logger("relay.queue")

T = TypeVar("T")
R = TypeVar("R")


class _Submission(Generic[T, R]):
    __slots__ = ("future", "items")

    def __init__(self, items: Sequence[T], future: asyncio.Future[list[R]] | None) -> None:
        self.items = items
        self.future = future  # None: nobody waits (enqueue)


class GroupCommit(Generic[T, R]):
    """``commit(items) -> results`` is called with the items of one or more submissions and
    must return one result per item, in order (``None`` results are fine)."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        max_batch: int = 1000,
        commit_timeout: float = 30.0,
        retry_delays: Sequence[float] = (),
        on_commit: Callable[[list[T], Sequence[R]], Awaitable[None] | None] | None = None,
    ) -> None:
        self._commit_fn = commit
        self.name = name
        self.max_batch = max_batch
        self.commit_timeout = commit_timeout
        self.retry_delays = tuple(retry_delays)
        self._on_commit = on_commit
        self._pending: list[_Submission[T, R]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Return the items' results once they are committed; raise StorageUnavailable (or
        the commit's error) otherwise. The commit happens even if the caller is cancelled
        (cancelling the wait only cancels this future; the items stay in the batch)."""
        if not items:
            return []
        if self._closing:
            raise StorageUnavailable(f"{self.name} is shutting down")
        # The hot path (one per SMTP message): one future, no shield, no done-callback.
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission(items, fut))
        self._wake.set()
        return await fut

    def enqueue(self, items: Sequence[T]) -> None:
        """Commit ``items`` with the next batch; nobody waits for them (failures are logged)."""
        if not items:
            return
        if self._closing:
            raise StorageUnavailable(f"{self.name} is shutting down")
        self._pending.append(_Submission(items, None))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                taken = size = 0
                for sub in self._pending:
                    if taken and size >= self.max_batch:
                        break
                    taken += 1
                    size += len(sub.items)
                batch = self._pending[:taken]
                del self._pending[:taken]
                await self._commit_batch(batch)
            if self._closing:
                return

    async def _attempt(self, batch: list[_Submission[T, R]], timeout: float) -> None:
        items = [item for sub in batch for item in sub.items]
        if timeout <= 0:
            raise StorageUnavailable("no time left to commit")
        async with asyncio.timeout(timeout):  # no extra task per commit, unlike wait_for
            results = await self._commit_fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        if self._on_commit is not None:
            try:
                after = self._on_commit(items, results)
                if inspect.isawaitable(after):
                    await after
            except Exception:
                log.exception("after-commit step failed", writer=self.name)
        at = 0
        for sub in batch:
            n = len(sub.items)
            if sub.future is not None and not sub.future.done():
                sub.future.set_result(list(results[at : at + n]))
            at += n

    async def _commit_batch(self, batch: list[_Submission[T, R]]) -> None:
        deadline = time.monotonic() + self.commit_timeout
        error: BaseException | None = None
        for delay in (0.0, *self.retry_delays):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._attempt(batch, deadline - time.monotonic())
                return
            except Exception as exc:
                error = exc
                metrics.STORAGE_ERRORS.labels(operation=self.name).inc()
                log.warning(
                    "commit failed",
                    writer=self.name,
                    items=sum(len(s.items) for s in batch),
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
        if len(batch) > 1:
            # One bad submission must not cost the others their commit: each alone now, within
            # the same deadline (in an outage they all fail).
            for sub in batch:
                try:
                    await self._attempt([sub], deadline - time.monotonic())
                except Exception as exc:
                    self._fail([sub], exc)
            return
        assert error is not None
        self._fail(batch, error)

    def _fail(self, batch: list[_Submission[T, R]], error: BaseException) -> None:
        err = error if isinstance(error, StorageUnavailable) else StorageUnavailable(str(error))
        log.error(
            "not committed",
            writer=self.name,
            items=sum(len(s.items) for s in batch),
            error=type(error).__name__,
        )
        for sub in batch:
            if sub.future is not None and not sub.future.done():
                sub.future.set_exception(err)

    async def stop(self) -> None:
        """Commit what is pending, then stop (new submissions are refused meanwhile)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(self._task, return_exceptions=True), self.commit_timeout + 5
                )
