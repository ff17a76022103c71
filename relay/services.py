"""The shared infrastructure of one node: storage, caches, bus, rate limits, secrets.

Built once by ``relay.server`` and handed to the SMTP listeners, the admin app and the delivery
workers. Tests build one the same way (``Services.create``) against real SQLite/PostgreSQL and,
when asked, real Redis.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.cache import LocalBus, RedisBus
from relay.config import Settings
from relay.datadir import use_generated_kek
from relay.directory import Directory
from relay.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from relay.secrets import SecretBox
from relay.store.db import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    bus: LocalBus
    directory: Directory
    box: SecretBox
    limiter: RateLimiter
    redis: Any = None
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Wake-ups after new recipients were committed: the queue writers of this process call
    # ``notify_enqueued`` after each commit (their ``on_commit``), and so does the IPC link when
    # another process of the node committed (relay/procs.py). Listeners: the delivery worker
    # in this process (mta/worker.py) and the parent's wake-up of its delivery children.
    on_enqueued: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    async def create(
        cls, settings: Settings, *, bus: LocalBus | None = None, multi_process: bool = False
    ) -> Services:
        """``bus``: a child process's link to its parent. ``multi_process``: other processes
        of this node write the same SQLite file (see Database's process lock)."""
        db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            echo=settings.database.echo,
            process_lock=multi_process,
        )
        redis = None
        limiter: RateLimiter
        if settings.redis.url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis.url, decode_responses=True)
            bus = bus or RedisBus(redis)
            limiter = RedisRateLimiter(redis)
        else:
            bus = bus or LocalBus()
            limiter = MemoryRateLimiter()
        # The embedded default seals stored secrets with a generated key unless one is set.
        use_generated_kek(settings)
        box = SecretBox(settings.security.key_encryption_key)
        directory = Directory(db, bus, box)
        node_id = (
            settings.server.node_id
            or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        return cls(settings, db, bus, directory, box, limiter, redis, node_id)

    async def start(self) -> None:
        await self.bus.start()

    def notify_enqueued(self) -> None:
        for cb in self.on_enqueued:
            cb()

    async def close(self) -> None:
        await self.bus.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        await self.db.close()
