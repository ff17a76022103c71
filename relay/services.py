"""The shared infrastructure of one node: storage, caches, bus, limits, secrets.

Built once per process by ``relay.node`` (the node builder, which ``relay serve``, its worker
processes, the docs generator and the tests use) and handed to the SMTP listeners, the admin
app and the delivery workers. Tests build it against real SQLite/PostgreSQL and, when asked,
real Redis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.cache import LocalBus, RedisBus, redis_address
from relay.config import Settings
from relay.datadir import use_generated_kek
from relay.directory import Directory
from relay.leases import owner_id
from relay.nodelimits import ConnectionGate, NodeLimits, ParentGate, ParentLimiter, ParentLink
from relay.ratelimit import Counters, FallbackLimiter, RedisRateLimiter
from relay.secrets import SecretBox
from relay.store.db import Database

# Seconds a Redis limits command may take before the node counts on its own (relay.ratelimit).
REDIS_LIMITS_TIMEOUT = 2.0


@dataclass
class Services:
    settings: Settings
    db: Database
    bus: LocalBus
    directory: Directory
    box: SecretBox
    limiter: Counters
    redis: Any = None
    node_id: str = field(default_factory=owner_id)
    # Wake-ups after new recipients were committed: the queue writers of this process call
    # ``notify_enqueued`` after each commit (their ``on_commit``), and so does the IPC link when
    # another process of the node committed (relay/procs.py). Listeners: the delivery worker
    # in this process (mta/worker.py) and the parent's wake-up of its delivery children.
    on_enqueued: list[Callable[[], None]] = field(default_factory=list)
    # SMTP connection admission, for the node as a whole (relay.nodelimits).
    connections: ConnectionGate | None = None
    # The main process: the node's counters and connection table, which workers ask.
    node_limits: NodeLimits | None = None
    # A worker process: its questions to the main process.
    parent: ParentLink | None = None
    # The limits' own Redis client (timeouts set), closed with the rest.
    redis_limits: Any = None

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        bus: LocalBus | None = None,
        multi_process: bool = False,
        parent: ParentLink | None = None,
    ) -> Services:
        """``bus`` and ``parent``: a child process's links to its parent (the bus for cache
        invalidations, ``parent`` for the node's limits). ``multi_process``: other processes
        of this node write the same SQLite file (see Database's process lock)."""
        db = Database(
            settings.database_url,
            pool_size=settings.database.pool_size,
            echo=settings.database.echo,
            process_lock=multi_process,
        )
        smtp = settings.smtp
        node_limits: NodeLimits | None = None
        node: Counters
        connections: ConnectionGate
        if parent is None:
            node_limits = NodeLimits(smtp.max_connections, smtp.max_connections_per_ip)
            node, connections = node_limits.counters, node_limits.gate
        else:
            node = ParentLimiter(parent)
            connections = ParentGate(parent, smtp.max_connections, smtp.max_connections_per_ip)
        redis = counters = None
        limiter: Counters = node
        if settings.redis.url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis.url, decode_responses=True)
            bus = bus or RedisBus(redis)
            # Its own client, with timeouts: a Redis that stops answering must not hold a
            # session longer than that (the bus's subscription waits on its socket for ever).
            counters = aioredis.from_url(
                settings.redis.url,
                decode_responses=True,
                socket_timeout=REDIS_LIMITS_TIMEOUT,
                socket_connect_timeout=REDIS_LIMITS_TIMEOUT,
            )
            limiter = FallbackLimiter(
                RedisRateLimiter(counters),
                node,
                name="redis",
                where=redis_address(counters),
            )
        else:
            bus = bus or LocalBus()
        # The embedded default seals stored secrets with a generated key unless one is set.
        use_generated_kek(settings)
        box = SecretBox(settings.security.key_encryption_key)
        directory = Directory(db, bus, box)
        # This process's lease owner id (relay/leases.py): node, pid, incarnation.
        node_id = owner_id(settings.server.node_id)
        return cls(
            settings,
            db,
            bus,
            directory,
            box,
            limiter,
            redis,
            node_id,
            connections=connections,
            node_limits=node_limits,
            parent=parent,
            redis_limits=counters,
        )

    async def start(self) -> None:
        await self.bus.start()

    def notify_enqueued(self) -> None:
        for cb in self.on_enqueued:
            cb()

    async def close(self) -> None:
        await self.bus.close()
        if self.parent is not None:
            self.parent.close()
        for client in (self.redis, self.redis_limits):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        await self.db.close()
