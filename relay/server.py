"""Lifecycle of one node: start in order, stop in order.

Start: storage (migrated on the embedded default; checked at head otherwise), caches and bus,
the queue writer, SMTP listeners, delivery workers, the admin app; then READY=1 to systemd.
Stop (SIGTERM/SIGINT): stop accepting connections, let SMTP sessions finish within the bound,
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
from typing import Any

import structlog

from relay import log as relay_log
from relay.admin.app import AdminServer
from relay.config import ConfigError, Settings, parse_hostport
from relay.queue.ingest import QueueWriter
from relay.secrets import new_admin_api_key
from relay.services import Services
from relay.store import migrate

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
    Path(settings.server.data_dir).mkdir(parents=True, exist_ok=True)
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
        self.services: Services | None = None
        self.writer: QueueWriter | None = None
        self.smtp: Any = None
        self.delivery: Any = None
        self.children: Any = None
        self._watcher: asyncio.Task[Any] | None = None
        self.admin: AdminServer | None = None
        self.mx: Any = None  # bounces: the MX listener (mta/bounces/listener.py)
        self._stopping = False
        # Set when delivery in this process died: the node stops (exit 1) rather than accept
        # mail nobody delivers; systemd restarts it.
        self.failed = asyncio.Event()
        # Set by a second signal: stop waiting for sessions and deliveries to finish.
        self.hurry = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        ensure_admin_key(s)
        children = s.delivery.processes if s.delivery.enabled else 0
        has_listeners = bool(s.smtp.listen or s.smtp.smtps_listen)
        smtp_children = max(s.smtp.processes - 1, 0) if has_listeners else 0
        services = self.services = await Services.create(
            s, multi_process=children + smtp_children > 0
        )
        if s.is_embedded_default:
            await migrate.upgrade(services.db)
        else:
            current = await migrate.current_revision(services.db)
            if current != migrate.head_revision():
                raise ConfigError(
                    [
                        f"database schema is at {current or 'nothing'}, this version needs "
                        f"{migrate.head_revision()}: run `relay migrate` first"
                    ]
                )
        await services.start()
        self.writer = QueueWriter(services)
        await self.writer.start()

        from relay.smtp.listener import SmtpServer

        self.smtp = SmtpServer(services, self.writer)
        await self.smtp.start()
        if children or smtp_children:
            from relay.procs import ChildProcesses

            self.children = ChildProcesses(
                services,
                delivery=children,
                smtp=smtp_children,
                listen_fds=self.smtp.listening_fds(),
            )
            await self.children.start()
        if s.delivery.enabled and not children:
            from mta.worker import DeliveryService

            self.delivery = DeliveryService(services)
            await self.delivery.start()
            failed = self.delivery.failed
            self._watcher = asyncio.create_task(failed.wait(), name="delivery-watch")
            self._watcher.add_done_callback(lambda _t: self.failed.set())
        if s.mx.listen:  # bounces: the MX listener for return-path mail
            from mta.bounces.listener import MxServer

            self.mx = MxServer(services)
            await self.mx.start()
        host, port = parse_hostport(s.admin.listen)
        self.admin = AdminServer(services, host, port, submitter=self.smtp.submitter)
        await self.admin.start()
        log.info(
            "relay started",
            smtp=[f"{h}:{p}" for h, p in self.smtp.bound("smtp")],
            smtps=[f"{h}:{p}" for h, p in self.smtp.bound("smtps")],
            admin=f"{host}:{self.admin.port}",
            database=services.db.dialect,
            redis=bool(services.redis),
        )
        sd_notify("READY=1")

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
        if self.smtp is not None:
            drains.append(self.smtp.stop(timeout, self.hurry))
        if self.children is not None:
            drains.append(self.children.stop("smtp", timeout, self.hurry))
        if self.mx is not None:  # bounces
            drains.append(self.mx.stop(timeout, self.hurry))
        await asyncio.gather(*drains)
        if self.writer is not None:
            await self.writer.stop()
        if self.children is not None:
            await self.children.stop("delivery", self.settings.delivery.stop_timeout, self.hurry)
        if self.delivery is not None:
            await self.delivery.stop(self.settings.delivery.stop_timeout, self.hurry)
        if self.admin is not None:
            await self.admin.stop()
        if self.services is not None:
            await self.services.close()
        log.info("relay stopped")


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until delivery in this process dies (exit 1)."""
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await relay.start()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(relay.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if relay.failed.is_set():
            log.critical("delivery stopped working; shutting the node down for a restart")
            return 1
        return 0
    finally:
        # A second signal during the drain cuts it short.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.hurry.set)
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
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
