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


class RedisBus(LocalBus):
    CHANNEL = "relay:invalidate"

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
        except Exception:
            # Other nodes fall back on TTL expiry; this node is already consistent.
            log.warning("invalidation publish failed", topic=topic)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="redis-invalidation")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5)

    async def _listen(self) -> None:
        first = True
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.CHANNEL)
                if not first:
                    self._reset_all()
                first = False
                self._ready.set()
                async for msg in pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    data = json.loads(msg["data"])
                    if data.get("o") != self._origin:
                        self._deliver(data["t"], data["k"], "redis")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("invalidation subscription lost; reconnecting")
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
