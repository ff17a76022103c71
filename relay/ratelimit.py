"""Rate limits: API requests per key and messages per account per hour.

A sliding-window counter (the current fixed window plus the previous one weighted by how much
of it still overlaps the sliding window): O(1) memory per key, accurate to a few percent, and
the same arithmetic in-process and in Redis, where one pipeline round trip does it and every
node shares the count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# The account's SendLimitPerHour: recipients accepted per sliding hour, counted per user.
SEND_WINDOW = 3600.0


def send_limit_key(user_id: int) -> str:
    return f"send:{user_id}"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    count: float
    retry_after: int


def _weighted(prev: float, cur: float, window: float, now: float) -> float:
    elapsed = (now % window) / window
    return prev * (1.0 - elapsed) + cur


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], float] = {}

    def _gc(self, current: int) -> None:
        if len(self._counts) > 100_000:
            for k in [k for k in self._counts if k[1] < current - 1]:
                del self._counts[k]

    async def count(self, key: str, window: float) -> float:
        now = time.time()
        idx = int(now // window)
        return _weighted(
            self._counts.get((key, idx - 1), 0.0), self._counts.get((key, idx), 0.0), window, now
        )

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        idx = int(time.time() // window)
        self._gc(idx)
        self._counts[(key, idx)] = self._counts.get((key, idx), 0.0) + amount

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        """Count one request if it fits in the limit."""
        current = await self.count(key, window)
        if current + 1 > limit:
            return Decision(False, current, _retry_after(window))
        await self.add(key, window)
        return Decision(True, current + 1, 0)


class RedisRateLimiter:
    def __init__(self, redis: Any, prefix: str = "relay:rl:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _keys(self, key: str, window: float) -> tuple[str, str, float]:
        now = time.time()
        idx = int(now // window)
        return f"{self._prefix}{key}:{idx - 1}", f"{self._prefix}{key}:{idx}", now

    async def count(self, key: str, window: float) -> float:
        prev_k, cur_k, now = self._keys(key, window)
        prev, cur = await self._redis.mget(prev_k, cur_k)
        return _weighted(float(prev or 0), float(cur or 0), window, now)

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        _, cur_k, _ = self._keys(key, window)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat(cur_k, amount)
            pipe.expire(cur_k, math.ceil(window * 2) + 1)
            await pipe.execute()

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        prev_k, cur_k, now = self._keys(key, window)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(prev_k)
            pipe.incr(cur_k)
            pipe.expire(cur_k, math.ceil(window * 2) + 1)
            prev, cur, _ = await pipe.execute()
        total = _weighted(float(prev or 0), float(cur), window, now)
        if total > limit:
            # Give the slot back so rejected requests do not extend the lockout.
            await self._redis.decr(cur_k)
            return Decision(False, total - 1, _retry_after(window))
        return Decision(True, total, 0)


def _retry_after(window: float) -> int:
    return max(1, math.ceil(window - (time.time() % window)))


RateLimiter = MemoryRateLimiter | RedisRateLimiter
