"""In-memory caches and the invalidation bus that keeps them true across nodes.

Every node caches what the SMTP hot path reads (credentials, users, domains, suppression,
routes). A change made through the admin app publishes ``(topic, key)`` on the bus after its
commit; every node drops that entry. Without Redis the bus is in-process. With Redis it is a
pub/sub channel; the publishing node also applies the change locally at once, and a node that
loses its subscription clears every cache when it reconnects, since it may have missed messages.
TTLs bound staleness in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("relay.cache")

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


class TTLCache(Generic[K, V]):
    """A bounded LRU map whose entries also expire after ``ttl`` seconds."""

    __slots__ = ("_data", "maxsize", "ttl")

    def __init__(self, maxsize: int = 100_000, ttl: float = 300.0) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.maxsize = maxsize
        self.ttl = ttl

    def get(self, key: K, default: Any = _MISSING) -> Any:
        item = self._data.get(key)
        if item is None:
            return default
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._data[key] = (time.monotonic() + self.ttl, value)
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


MISSING = _MISSING

Callback = Callable[[str], None]
# (topic, key, origin): origin names where the message came from (None = this process).
AnyCallback = Callable[[str, str, "str | None"], None]


class LocalBus:
    """In-process invalidation: callbacks run synchronously on publish."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Callback]] = {}
        self._all: list[AnyCallback] = []
        self._reset: list[Callable[[], None]] = []

    def subscribe(self, topic: str, callback: Callback) -> None:
        self._subs.setdefault(topic, []).append(callback)

    def subscribe_all(self, callback: AnyCallback) -> None:
        """Every message of every topic, with its origin (used to forward to child processes)."""
        self._all.append(callback)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Called when this node may have missed invalidations and must drop everything."""
        self._reset.append(callback)

    def _deliver(self, topic: str, key: str, origin: str | None = None) -> None:
        for cb in self._subs.get(topic, ()):
            try:
                cb(key)
            except Exception:
                log.exception("invalidation callback failed", topic=topic)
        for any_cb in self._all:
            try:
                any_cb(topic, key, origin)
            except Exception:
                log.exception("invalidation forwarder failed", topic=topic)

    def _reset_all(self) -> None:
        for cb in self._reset:
            cb()

    async def publish(self, topic: str, key: str | int, origin: str | None = None) -> None:
        self._deliver(topic, str(key), origin)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def redis_address(client: Any) -> str:
    """Where a redis-py client connects, for log lines (never its password)."""
    try:
        kw = client.connection_pool.connection_kwargs
    except AttributeError:
        return "redis"
    if kw.get("path"):
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


class RedisBus(LocalBus):
    CHANNEL = "relay:invalidate"
    # Reconnect attempts back off from 1 s to this, so an outage costs a log line per attempt
    # at a slowing rate, not one per second.
    MAX_BACKOFF = 30.0

    def __init__(self, redis: Any) -> None:
        super().__init__()
        self._redis = redis
        self._origin = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def publish(self, topic: str, key: str | int, origin: str | None = None) -> None:
        self._deliver(topic, str(key), origin)
        payload = json.dumps({"o": self._origin, "t": topic, "k": str(key)})
        try:
            await self._redis.publish(self.CHANNEL, payload)
        except Exception as exc:
            # Other nodes fall back on TTL expiry; this node is already consistent.
            log.warning(
                "invalidation publish failed; other nodes see the change when their cache "
                "entry expires",
                topic=topic,
                redis=redis_address(self._redis),
                error=_reason(exc),
            )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="redis-invalidation")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5)

    async def _listen(self) -> None:
        first = True
        backoff = 1.0
        down_since: float | None = None
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.CHANNEL)
                if not first:
                    # Invalidations published while we were away are lost: start afresh.
                    self._reset_all()
                if down_since is not None:
                    log.info(
                        "Redis invalidation subscription restored; caches cleared",
                        redis=redis_address(self._redis),
                        down_seconds=round(time.monotonic() - down_since, 1),
                    )
                first, backoff, down_since = False, 1.0, None
                self._ready.set()
                async for msg in pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    data = json.loads(msg["data"])
                    if data.get("o") != self._origin:
                        self._deliver(data["t"], data["k"], "redis")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if down_since is None:
                    down_since = time.monotonic()
                log.warning(
                    "Redis invalidation subscription unavailable; caches fall back on expiry",
                    redis=redis_address(self._redis),
                    error=_reason(exc),
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _reason(exc: BaseException) -> str:
    from relay.diagnose import reason

    return reason(exc)
