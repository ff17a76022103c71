"""Lifecycle of one node: start in order, stop in order.

Start: storage (migrated on the embedded default; checked at head otherwise), caches and bus,
the queue writer, SMTP listeners, delivery workers, webhook workers, the admin app, the
feedback writer and the tracking listener; then READY=1 to systemd.
Reload (SIGHUP): relay.reload, in every process of the tree.
Stop (SIGTERM/SIGINT): stop accepting connections (SMTP and tracking), let SMTP sessions
finish within the bound,
commit what is queued, let in-flight deliveries finish within the bound and release the rest of
their leases, stop the admin app, close storage. A second signal skips the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from relay import datadir
from relay import log as relay_log
from relay.admin.app import AdminServer
from relay.config import ConfigError, Settings, parse_hostport
from relay.diagnose import StartupError, describe_database, describe_redis
from relay.event_maintenance import EventMaintenance
from relay.health import StorageProbe
from relay.node import Node, build_node, require_head, schema_revision, settle_gc
from relay.queue.ingest import QueueWriter
from relay.reload import Reloader
from relay.secrets import new_admin_api_key
from relay.services import Services
from relay.store.repos import sealing

if TYPE_CHECKING:
    from mta.worker import DeliveryService
    from relay.webhooks.worker import WebhookWorker

log = structlog.get_logger("relay.server")


def sd_notify(state: str) -> None:
    """systemd Type=notify readiness (sd_notify(3)); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def ensure_admin_key(settings: Settings) -> None:
    """Use RELAY_ADMIN_API_KEY, else the stored key, else generate one and print it once."""
    Path(settings.server.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.admin.api_key:
        return
    path = Path(settings.server.data_dir) / "admin_api_key"
    if path.exists():
        settings.admin.api_key = path.read_text().strip()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_admin_api_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    settings.admin.api_key = key
    print(f"Generated admin API key (shown once; stored in {path}):\n{key}", flush=True)


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # What this process runs besides its listeners (relay/node.py builds it).
        self.node: Node | None = None
        self.smtp: Any = None
        self.children: Any = None
        self._watcher: asyncio.Task[Any] | None = None
        self.admin: AdminServer | None = None
        self.probe: StorageProbe | None = None
        self.feedback: Any = None
        self.tracking: Any = None
        self.event_maintenance: EventMaintenance | None = None
        self.lookups: Any = None  # Postfix socketmap / policy listeners (mta/postfix)
        self.mx: Any = None  # the MX listener (mta/bounces/listener.py)
        self._stopping = False
        # Set when delivery in this process died: the node stops (exit 1) rather than accept
        # mail nobody delivers; systemd restarts it.
        self.failed = asyncio.Event()
        # Set by a second signal: stop waiting for sessions and deliveries to finish.
        self.hurry = asyncio.Event()
        self.reloader = Reloader(settings)

    # The node's parts, for the code and tests that look at one (None before start).
    @property
    def services(self) -> Services | None:
        return self.node.services if self.node is not None else None

    @property
    def writer(self) -> QueueWriter | None:
        return self.node.writer if self.node is not None else None

    @property
    def delivery(self) -> DeliveryService | None:
        return self.node.delivery if self.node is not None else None

    @property
    def webhooks(self) -> WebhookWorker | None:
        return self.node.webhooks if self.node is not None else None

    async def start(self) -> None:
        s = self.settings
        datadir.secure(s)
        ensure_admin_key(s)
        children = s.delivery.processes if s.delivery.enabled else 0
        has_listeners = bool(s.smtp.listen or s.smtp.smtps_listen)
        smtp_children = max(s.smtp.processes - 1, 0) if has_listeners else 0
        # Delivery and webhook posting run here unless delivery processes do (relay/procs.py):
        # the main process is the node's ingest bottleneck, and posting webhooks is background
        # work like delivery, sharing its lower priority.
        node = self.node = await build_node(
            s, ingest=True, background=not children, multi_process=children + smtp_children > 0
        )
        services = node.services
        try:
            current = await schema_revision(services)
        except Exception as exc:
            raise StartupError(describe_database(exc, s.database_url)) from None
        require_head(current)
        await self._seal_stored_secrets()
        await services.start()
        redis_state = await self._redis_state()
        self.event_maintenance = EventMaintenance(services.db, s.events)
        await self.event_maintenance.start()
        await node.start_ingest()
        assert node.submitter is not None

        from relay.smtp.listener import SmtpServer

        self.smtp = SmtpServer(services, node.submitter)
        await self.smtp.start()
        self.reloader.tls_hooks.append(self.smtp.reload_tls)
        if children or smtp_children:
            from relay.procs import ChildProcesses

            self.children = ChildProcesses(
                services,
                delivery=children,
                smtp=smtp_children,
                listen_fds=self.smtp.listening_fds(),
            )
            await self.children.start()
        self.probe = StorageProbe(services)
        await self.probe.start()
        # A webhook signing key for every domain (rows from before per-domain keys).
        from relay.webhooks.keys import ensure_keys

        await ensure_keys(services.db, services.box)
        await node.start_background()
        if node.delivery is not None:
            failed = node.delivery.failed
            self._watcher = asyncio.create_task(failed.wait(), name="delivery-watch")
            self._watcher.add_done_callback(lambda _t: self.failed.set())
        host, port = parse_hostport(s.admin.listen)
        self.admin = AdminServer(services, host, port, submitter=node.submitter, probe=self.probe)
        await self.admin.start()
        # What comes back about sent mail (tracking hits, bounce reports): one writer.
        from relay.queue.feedback import FeedbackWriter

        self.feedback = FeedbackWriter(services.db, services.bus)
        self.feedback.start()
        if s.mx.listen:  # the MX listener for return-path mail (mta/bounces/)
            from mta.bounces.listener import MxServer

            self.mx = MxServer(services, self.feedback)
            await self.mx.start()
        if s.tracking.listen:
            from relay.tracking.listener import TrackingServer

            self.tracking = await TrackingServer.create(services, self.feedback)
            await self.tracking.start()
        # Postfix lookups (mta/postfix): the same relay-domain set as the admin app's check.
        from mta.postfix.lookups import PostfixLookups, configured

        if configured(s.mx):
            from relay.admin.resources import RELAY_DOMAINS

            self.lookups = PostfixLookups(s.mx, self.admin.app[RELAY_DOMAINS])
            await self.lookups.start()
        log.info(
            "relay started",
            smtp=[f"{h}:{p}" for h, p in self.smtp.bound("smtp")],
            smtps=[f"{h}:{p}" for h, p in self.smtp.bound("smtps")],
            admin=f"{host}:{self.admin.port}",
            tracking=f"{self.tracking.host}:{self.tracking.port}" if self.tracking else None,
            database=services.db.dialect,
            redis=redis_state,
        )
        settle_gc()
        sd_notify("READY=1")

    async def _seal_stored_secrets(self) -> None:
        """Secrets stored before a key-encryption key was in use get sealed now (they were
        readable all along: an unsealed value is used as it is)."""
        services = self.services
        if services is None or not services.box.sealing:
            return
        try:
            async with services.db.write() as conn:
                count = await sealing.seal_plaintext(conn, services.box.seal)
        except Exception as exc:
            raise StartupError(describe_database(exc, self.settings.database_url)) from None
        if count:
            log.info("sealed stored secrets with the key-encryption key", count=count)

    async def _redis_state(self) -> str:
        """ "off" (not configured), "up", or "down": the node runs without Redis until it
        answers (caches fall back on their TTLs); the warning says why."""
        services = self.services
        if services is None or services.redis is None:
            return "off"
        try:
            await asyncio.wait_for(services.redis.ping(), 3)
        except Exception as exc:
            log.warning(
                "Redis unavailable at start; running without it until it answers",
                error=describe_redis(exc, self.settings.redis.url, 3),
            )
            return "down"
        return "up"

    async def reload(self) -> None:
        """SIGHUP: this process reloads, and tells its worker processes to."""
        if self.children is not None:
            self.children.reload()
        await self.reloader.reload()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        sd_notify("STOPPING=1")
        timeout = self.settings.server.shutdown_timeout
        log.info("relay stopping", timeout=timeout)
        # SMTP first, in every process at once (sessions finish their transaction); then what
        # is queued is committed; then delivery drains.
        drains = []
        if self.tracking is not None:
            drains.append(self.tracking.stop(min(timeout, 5.0)))
        if self.smtp is not None:
            drains.append(self.smtp.stop(timeout, self.hurry))
        if self.children is not None:
            drains.append(self.children.stop("smtp", timeout, self.hurry))
        if self.mx is not None:
            drains.append(self.mx.stop(timeout, self.hurry))
        await asyncio.gather(*drains)
        if self.node is not None:
            await self.node.stop_ingest()
        if self.children is not None:
            await self.children.stop("delivery", self.settings.delivery.stop_timeout, self.hurry)
        if self.node is not None:
            await self.node.stop_background(self.hurry)
        if self.lookups is not None:
            await self.lookups.stop(min(timeout, 5.0))
        if self.admin is not None:
            await self.admin.stop()
        if self.probe is not None:
            await self.probe.stop()
        if self.feedback is not None:
            await self.feedback.stop()
        if self.event_maintenance is not None:
            await self.event_maintenance.stop(timeout)
        if self.node is not None:
            await self.node.services.close()
        log.info("relay stopped")


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until delivery in this process dies (exit 1)."""
    for unknown in settings.unknown_env:
        log.warning("ignored: " + unknown)
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = asyncio.ensure_future(relay.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    try:
        await relay.start()
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(relay.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if relay.failed.is_set():
            log.critical("delivery stopped working; shutting the node down for a restart")
            return 1
        return 0
    finally:
        # A second signal during the drain cuts it short; a hangup now is ignored.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.hurry.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        await relay.stop()


def loop_factory() -> Any:
    """uvloop when installed (a dependency on Linux): ~25% more SMTP throughput here."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


def run_async(settings: Settings, main: Any) -> int:
    """Run a coroutine the way `serve` runs: logging configured, uvloop when available."""
    relay_log.configure(settings.log.format, settings.log.level)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(main)
    return int(result or 0)


def run(settings: Settings) -> int:
    relay_log.configure(settings.log.format, settings.log.level)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(settings))
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
