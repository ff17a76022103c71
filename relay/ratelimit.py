"""Rate limits: API requests per key, messages per account per hour, failed logins.

A sliding-window counter (the current fixed window plus the previous one weighted by how much
of it still overlaps the sliding window): O(1) memory per key, accurate to a few percent, and
the same arithmetic in-process and in Redis, where one round trip does it and every node shares
the count.

Where the counts live (``relay.services`` builds it):
- ``MemoryRateLimiter``: one process's counters. The main process's instance is the node's:
  worker processes count in it over their link to the main process (``relay.nodelimits``).
- ``RedisRateLimiter``: the cluster's counters.
- ``FallbackLimiter``: Redis while it answers; this node's counters while it does not (one
  warning per attempt, attempts backing off from 1 to 30 s), so a Redis outage neither stops
  mail nor lifts the limits: each node holds them on its own meanwhile.

A limit that guards work which may still fail (a recipient is accepted only if its message is
committed) is *reserved*: ``reserve`` counts the amount at once if it fits, atomically, so
concurrent sessions cannot all pass on the same last unit; ``Reservation.release`` gives it back
when the work does not happen (RSET, refused or lost DATA).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from relay import metrics

log = structlog.get_logger("relay.ratelimit")

# The account's SendLimitPerHour: recipients accepted per sliding hour, counted per user.
SEND_WINDOW = 3600.0


def send_limit_key(user_id: int) -> str:
    return f"send:{user_id}"


class LimiterUnavailable(Exception):
    """The counters cannot be reached (the main process does not answer a worker process)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    count: float
    retry_after: int


@dataclass(slots=True)
class Reservation:
    """``amount`` counted under ``key`` in window number ``index``, by ``holder``."""

    key: str
    window: float
    index: int
    amount: float
    holder: Counters

    def release(self) -> None:
        """Give the amount back: the work it stood for did not happen. Never raises."""
        self.holder.give_back(self)


class Counters(Protocol):
    """What every limiter offers (relay.services.Services.limiter)."""

    async def count(self, key: str, window: float) -> float: ...

    async def counts(self, items: list[tuple[str, float]]) -> list[float]:
        """The sliding-window count of each (key, window), in one round trip."""
        ...

    async def add(self, key: str, window: float, amount: float = 1.0) -> None: ...

    async def add_many(self, items: list[tuple[str, float]], amount: float = 1.0) -> None: ...

    async def reserve(
        self, key: str, limit: float, window: float, amount: float = 1.0
    ) -> Reservation | None:
        """Count ``amount`` if the count stays within ``limit``; None (nothing counted) if not."""
        ...

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        """Count one request if it fits in the limit (never given back)."""
        ...

    def give_back(self, reservation: Reservation) -> None: ...


def window_index(window: float, now: float) -> int:
    return int(now // window)


def _weighted(prev: float, cur: float, window: float, now: float) -> float:
    elapsed = (now % window) / window
    return prev * (1.0 - elapsed) + cur


def retry_after(window: float, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(window - (now % window)))


class MemoryRateLimiter:
    """Counters in this process. The synchronous ``*_now`` methods are what the main process
    answers its worker processes with (relay.nodelimits), without an await in between."""

    GC_INTERVAL = 30.0

    def __init__(self) -> None:
        self._counts: dict[tuple[str, float, int], float] = {}
        self._next_gc = 0.0

    def _gc(self, now: float) -> None:
        # Windows of different lengths share the map: each entry expires by its own window.
        if now < self._next_gc:
            return
        self._next_gc = now + self.GC_INTERVAL
        stale = [k for k in self._counts if k[2] < window_index(k[1], now) - 1]
        for k in stale:
            del self._counts[k]

    def count_now(self, key: str, window: float) -> float:
        now = time.time()
        idx = window_index(window, now)
        prev = self._counts.get((key, window, idx - 1), 0.0)
        return _weighted(prev, self._counts.get((key, window, idx), 0.0), window, now)

    def add_now(self, key: str, window: float, amount: float = 1.0) -> int:
        now = time.time()
        self._gc(now)
        idx = window_index(window, now)
        slot = (key, window, idx)
        self._counts[slot] = self._counts.get(slot, 0.0) + amount
        return idx

    def reserve_now(self, key: str, limit: float, window: float, amount: float = 1.0) -> int | None:
        """The window index the amount was counted in, or None if it does not fit."""
        if self.count_now(key, window) + amount > limit:
            return None
        return self.add_now(key, window, amount)

    def give_back_now(self, key: str, window: float, index: int, amount: float) -> None:
        slot = (key, window, index)
        left = self._counts.get(slot, 0.0) - amount
        if left > 0:
            self._counts[slot] = left
        else:
            self._counts.pop(slot, None)

    async def count(self, key: str, window: float) -> float:
        return self.count_now(key, window)

    async def counts(self, items: list[tuple[str, float]]) -> list[float]:
        return [self.count_now(key, window) for key, window in items]

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        self.add_now(key, window, amount)

    async def add_many(self, items: list[tuple[str, float]], amount: float = 1.0) -> None:
        for key, window in items:
            self.add_now(key, window, amount)

    async def reserve(
        self, key: str, limit: float, window: float, amount: float = 1.0
    ) -> Reservation | None:
        idx = self.reserve_now(key, limit, window, amount)
        return None if idx is None else Reservation(key, window, idx, amount, self)

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        current = self.count_now(key, window)
        if current + 1 > limit:
            return Decision(False, current, retry_after(window))
        self.add_now(key, window)
        return Decision(True, current + 1, 0)

    def give_back(self, reservation: Reservation) -> None:
        r = reservation
        self.give_back_now(r.key, r.window, r.index, r.amount)


# KEYS: previous window, current window. ARGV: weight of the previous window, amount, limit,
# expiry. Counts the amount only if it fits, in one step: concurrent reservations on every node
# see each other. Numbers go back as strings (Lua numbers would be truncated to integers).
_RESERVE = """
local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local total = prev * tonumber(ARGV[1]) + cur
if total + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return {0, tostring(total)}
end
redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, tostring(total + tonumber(ARGV[2]))}
"""


class RedisRateLimiter:
    def __init__(self, redis: Any, prefix: str = "relay:rl:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._returns: set[asyncio.Task[None]] = set()

    def _key(self, key: str, index: int) -> str:
        return f"{self._prefix}{key}:{index}"

    @staticmethod
    def _ttl(window: float) -> int:
        return math.ceil(window * 2) + 1

    async def count(self, key: str, window: float) -> float:
        return (await self.counts([(key, window)]))[0]

    async def counts(self, items: list[tuple[str, float]]) -> list[float]:
        now = time.time()
        names: list[str] = []
        for key, window in items:
            idx = window_index(window, now)
            names += [self._key(key, idx - 1), self._key(key, idx)]
        values = await self._redis.mget(names)
        return [
            _weighted(float(values[2 * i] or 0), float(values[2 * i + 1] or 0), window, now)
            for i, (_, window) in enumerate(items)
        ]

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        await self.add_many([(key, window)], amount)

    async def add_many(self, items: list[tuple[str, float]], amount: float = 1.0) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, window in items:
                name = self._key(key, window_index(window, now))
                pipe.incrbyfloat(name, amount)
                pipe.expire(name, self._ttl(window))
            await pipe.execute()

    async def _run_reserve(
        self, key: str, limit: float, window: float, amount: float
    ) -> tuple[bool, float, int]:
        now = time.time()
        idx = window_index(window, now)
        weight = 1.0 - (now % window) / window
        ok, total = await self._reserve(
            keys=[self._key(key, idx - 1), self._key(key, idx)],
            args=[repr(weight), repr(float(amount)), repr(float(limit)), self._ttl(window)],
        )
        return bool(int(ok)), float(total), idx

    async def reserve(
        self, key: str, limit: float, window: float, amount: float = 1.0
    ) -> Reservation | None:
        ok, _, idx = await self._run_reserve(key, limit, window, amount)
        return Reservation(key, window, idx, amount, self) if ok else None

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        ok, total, _ = await self._run_reserve(key, limit, window, 1.0)
        return Decision(ok, total, 0 if ok else retry_after(window))

    def give_back(self, reservation: Reservation) -> None:
        task = asyncio.ensure_future(self._give_back(reservation))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _give_back(self, r: Reservation) -> None:
        try:
            await self._redis.incrbyfloat(self._key(r.key, r.index), -r.amount)
        except Exception as exc:
            # Counted a little too much until the window passes: stricter, never looser.
            log.debug("could not give back a reservation", key=r.key, error=str(exc))


# What a shared counter's failure looks like (the main process not answering; FallbackLimiter
# adds Redis's errors: redis is imported only when it is configured).
UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError, LimiterUnavailable)


class Circuit:
    """Whether to ask a shared service now, after it failed: it is left alone for a back-off
    (1 s, doubling to 30 s), then one caller tries it again (``probe``) while the others carry
    on without it. Each failed attempt logs one warning with the reason and the back-off, the
    recovery one line: never a traceback per call."""

    MAX_BACKOFF = 30.0

    def __init__(self, name: str, where: str, what: str) -> None:
        self.name, self.where, self.what = name, where, what
        self._retry_at = 0.0  # 0: up
        self._backoff = 1.0
        self._down_since = 0.0
        self._probing = False

    @property
    def up(self) -> bool:
        return self._retry_at == 0.0

    def attempt(self) -> bool | None:
        """None: do not ask now. False: ask (normal). True: ask, as the probe."""
        if self._retry_at == 0.0:
            return False
        if self._probing or time.monotonic() < self._retry_at:
            return None
        self._probing = True
        return True

    def failed(self, exc: BaseException | str, probe: bool) -> None:
        if probe:
            self._probing = False
        elif self._retry_at != 0.0:
            return  # another caller already reported this outage
        if self._retry_at == 0.0:
            self._down_since = time.monotonic()
            metrics.LIMITS_FALLBACK.labels(self.name).set(1)
        else:
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
        self._retry_at = time.monotonic() + self._backoff
        if isinstance(exc, BaseException):
            from relay.diagnose import reason

            exc = reason(exc)
        log.warning(
            self.what, limits=self.name, where=self.where, error=exc, retry_in=self._backoff
        )

    def abandon(self, probe: bool) -> None:
        """The attempt ended without an answer either way (the caller was cancelled)."""
        if probe:
            self._probing = False

    def succeeded(self, probe: bool) -> None:
        if probe:
            self._probing = False
        if self._retry_at == 0.0:
            return
        log.info(
            "shared limits available again",
            limits=self.name,
            where=self.where,
            down_seconds=round(time.monotonic() - self._down_since, 1),
        )
        self._retry_at, self._backoff = 0.0, 1.0
        metrics.LIMITS_FALLBACK.labels(self.name).set(0)


class FallbackLimiter:
    """``primary`` (Redis) while it answers; ``fallback`` (this node's counters) while it does
    not, with a ``Circuit`` deciding when to try again. Reservations go back to whichever
    counted them."""

    def __init__(self, primary: Counters, fallback: Counters, *, name: str, where: str) -> None:
        from redis.exceptions import RedisError

        self.primary, self.fallback = primary, fallback
        self.errors: tuple[type[BaseException], ...] = (RedisError, *UNAVAILABLE)
        self.circuit = Circuit(
            name, where, "shared limits unavailable; counting on this node until they answer"
        )

    async def _call(self, op: str, *args: Any) -> Any:
        probe = self.circuit.attempt()
        if probe is not None:
            try:
                result = await getattr(self.primary, op)(*args)
            except self.errors as exc:
                self.circuit.failed(exc, probe)
            except BaseException:
                self.circuit.abandon(probe)
                raise
            else:
                self.circuit.succeeded(probe)
                return result
        return await getattr(self.fallback, op)(*args)

    async def count(self, key: str, window: float) -> float:
        result: float = await self._call("count", key, window)
        return result

    async def counts(self, items: list[tuple[str, float]]) -> list[float]:
        result: list[float] = await self._call("counts", items)
        return result

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        await self._call("add", key, window, amount)

    async def add_many(self, items: list[tuple[str, float]], amount: float = 1.0) -> None:
        await self._call("add_many", items, amount)

    async def reserve(
        self, key: str, limit: float, window: float, amount: float = 1.0
    ) -> Reservation | None:
        result: Reservation | None = await self._call("reserve", key, limit, window, amount)
        return result

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        result: Decision = await self._call("hit", key, limit, window)
        return result

    def give_back(self, reservation: Reservation) -> None:
        reservation.holder.give_back(reservation)


RateLimiter = Counters
