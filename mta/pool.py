"""SMTP client connections to delivery servers, opened once and reused across messages.

One ``ServerPool`` per delivery server (keyed by its whole configuration, so an edited server
gets fresh connections): at most ``connections_per_server`` connections, idle ones kept for
``idle_timeout`` and reused most-recently-used first, each replaced after
``messages_per_connection`` messages or after any error. Security follows the delivery
server's SendMethodSMTPSecure: "false" = plain, never upgraded; "ssl" = implicit TLS (RFC 8314);
"tls" = STARTTLS required (RFC 3207), refusing the server if it does not offer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosmtplib
import structlog

from relay import metrics
from relay.config import DeliverySettings
from relay.directory import DeliveryServerView

log = structlog.get_logger("mta.pool")

DEFAULT_TIMEOUT = 60.0
QUIT_TIMEOUT = 5.0


def client_tls_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """The context for "ssl" and "tls" servers: system CAs (or ``ca_file``), host name checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(eq=False)
class Connection:
    """One open SMTP session. Callers set ``broken`` when it must not be reused."""

    smtp: aiosmtplib.SMTP
    server: DeliveryServerView
    number: int
    messages: int = 0
    last_used: float = field(default_factory=time.monotonic)
    broken: bool = False
    # True while the connection has been used before: a first-command disconnect then most
    # likely means the server dropped it while idle, not that the server is down.
    reused: bool = False

    @property
    def usable(self) -> bool:
        return not self.broken and self.smtp.is_connected


class ServerPool:
    def __init__(
        self,
        server: DeliveryServerView,
        settings: DeliverySettings,
        tls_context: ssl.SSLContext,
        local_hostname: str,
    ) -> None:
        self.server = server
        self.settings = settings
        self.tls_context = tls_context
        self.local_hostname = local_hostname
        self._slots = asyncio.Semaphore(settings.connections_per_server)
        self._idle: list[Connection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._opened = 0
        # Callers holding or waiting for a connection; a pool in use is never forgotten.
        self.users = 0

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for one transaction; it goes back to the pool unless it broke."""
        self.users += 1
        try:
            async with self._slots:
                conn = self._take_idle() or await self._open()
                try:
                    yield conn
                except BaseException:
                    conn.broken = True
                    raise
                finally:
                    self._put_back(conn)
        finally:
            self.users -= 1

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                conn.reused = True
                return conn
            self._discard(conn)
        return None

    async def _open(self) -> Connection:
        s = self.server
        secure = s.secure.lower()
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=float(s.timeout) if s.timeout and s.timeout > 0 else DEFAULT_TIMEOUT,
            use_tls=secure == "ssl",
            # False, not None: None would upgrade opportunistically, and "false" means plain.
            start_tls=secure == "tls",
            tls_context=self.tls_context if secure in ("ssl", "tls") else None,
            local_hostname=self.local_hostname,
            username=s.username if s.auth else None,
            password=s.password if s.auth else None,
        )
        try:
            await smtp.connect()
        except BaseException:
            smtp.close()
            metrics.DELIVERY_CONNECTIONS.labels(result="error").inc()
            raise
        metrics.DELIVERY_CONNECTIONS.labels(result="opened").inc()
        metrics.DELIVERY_POOL_OPEN.inc()
        self._opened += 1
        return Connection(smtp, s, self._opened)

    def _put_back(self, conn: Connection) -> None:
        conn.last_used = time.monotonic()
        if conn.usable and conn.messages < self.settings.messages_per_connection:
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        """Close a connection: politely (QUIT, in the background) when it is still healthy."""
        metrics.DELIVERY_POOL_OPEN.dec()
        if conn.usable:
            task = asyncio.create_task(_quit(conn.smtp), name="smtp-quit")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            conn.smtp.close()

    def reap(self, now: float) -> None:
        """Close idle connections unused for ``idle_timeout``."""
        keep = []
        for conn in self._idle:
            if now - conn.last_used >= self.settings.idle_timeout or not conn.usable:
                self._discard(conn)
            else:
                keep.append(conn)
        self._idle = keep

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit(timeout=QUIT_TIMEOUT)
    except Exception:  # noqa: S110 - the server may already be gone; we are closing anyway
        pass
    finally:
        smtp.close()


class ConnectionPool:
    """Every delivery server's ``ServerPool``, and the task that closes idle connections."""

    def __init__(
        self, settings: DeliverySettings, tls_context: ssl.SSLContext, local_hostname: str
    ) -> None:
        self.settings = settings
        self.tls_context = tls_context
        self.local_hostname = local_hostname
        self._pools: dict[DeliveryServerView, ServerPool] = {}

    def for_server(self, server: DeliveryServerView) -> ServerPool:
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = ServerPool(
                server, self.settings, self.tls_context, self.local_hostname
            )
        return pool

    def reap(self) -> None:
        now = time.monotonic()
        for key, pool in list(self._pools.items()):
            pool.reap(now)
            if pool.idle_count == 0 and pool.users == 0:
                # Unused (or its server was edited or unassigned): forget it.
                del self._pools[key]

    async def run_reaper(self) -> None:
        interval = min(max(self.settings.idle_timeout / 2, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            self.reap()

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
