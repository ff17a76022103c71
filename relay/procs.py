"""The process tree of `relay serve`: delivery workers in child processes.

One Python process runs on one core. SMTP ingest (aiosmtpd, checks, DKIM, group commit) and
delivery (claims, aiosmtplib, outcome commits) each fill most of a core at full load, so
`relay serve` keeps SMTP and the admin app in the main process and runs delivery in
``delivery.processes`` children (0 = in the main process).

Parent and child talk over a socketpair, one JSON object per line:
- ``{"t": "inv", "topic": ..., "key": ...}`` both ways: a cache invalidation. The parent
  forwards each one to every other process (and to Redis, when configured), so a suppression a
  child adds after a hard bounce reaches the SMTP checks at once, and a route the admin changes
  reaches the children at once.
- ``{"t": "wake"}`` parent to child: the queue writer committed new recipients (SQLite has no
  LISTEN/NOTIFY; on PostgreSQL the children LISTEN as well).
- ``{"t": "reset"}`` parent to child: drop every cache (the parent lost its Redis subscription).
- ``{"t": "ready"}`` child to parent: the delivery worker runs.
A child whose parent goes away (EOF) shuts down; a child that dies is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any

import structlog

from relay import metrics
from relay.cache import LocalBus
from relay.config import Settings
from relay.services import Services

log = structlog.get_logger("relay.procs")

READY_TIMEOUT = 60.0


class Link:
    """One end of the parent-child socket: JSON lines in, JSON lines out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        if not line:
            return None
        data: dict[str, Any] = json.loads(line)
        return data

    def close(self) -> None:
        self.writer.close()


class Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"delivery-{index}"
        self.proc: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready = asyncio.Event()
        self.wake_pending = False


class DeliveryProcesses:
    """Parent side: spawn, feed, forward to, restart and stop the delivery children."""

    def __init__(self, services: Services, count: int) -> None:
        self.services = services
        self.settings = services.settings
        self.children = [Child(i) for i in range(count)]
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        services.bus.subscribe_all(self._forward)
        services.bus.on_reset(lambda: self._broadcast({"t": "reset"}))

    async def start(self) -> None:
        self.services.on_enqueued.append(self.wake)
        for child in self.children:
            self._tasks.append(asyncio.create_task(self._supervise(child), name=child.name))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.ready.wait() for c in self.children)), READY_TIMEOUT
            )
        except TimeoutError:
            raise RuntimeError("delivery processes did not become ready") from None

    # -- feeding -----------------------------------------------------------------------------

    def wake(self) -> None:
        """After an ingest commit. Coalesced: at most one wake per child per loop iteration."""
        for child in self.children:
            if child.link is not None and not child.wake_pending:
                child.wake_pending = True
                asyncio.get_running_loop().call_soon(self._send_wake, child)

    def _send_wake(self, child: Child) -> None:
        child.wake_pending = False
        if child.link is not None:
            child.link.send({"t": "wake"})

    def _forward(self, topic: str, key: str, origin: str | None) -> None:
        message = {"t": "inv", "topic": topic, "key": key}
        for child in self.children:
            if child.link is not None and child.name != origin:
                child.link.send(message)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for child in self.children:
            if child.link is not None:
                child.link.send(message)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _spawn(self, child: Child) -> None:
        parent_sock, child_sock = socket.socketpair()
        argv = [
            sys.executable,
            "-m",
            "relay",
            "delivery-worker",
            "--ipc-fd",
            str(child_sock.fileno()),
        ]
        if self.settings.source:
            argv += ["-c", self.settings.source]
        child.proc = await asyncio.create_subprocess_exec(
            *argv,
            pass_fds=(child_sock.fileno(),),
            env={**os.environ, "RELAY_CHILD_NAME": child.name},
        )
        child_sock.close()
        child.link = await Link.from_socket(parent_sock)
        log.info("delivery process started", child=child.name, pid=child.proc.pid)

    async def _supervise(self, child: Child) -> None:
        backoff = 1.0
        while not self._stopping:
            try:
                await self._spawn(child)
            except OSError as exc:
                log.error("cannot start delivery process", child=child.name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            assert child.link is not None and child.proc is not None
            await self._serve(child, child.link)
            code = await child.proc.wait()
            metrics.process_gone(child.proc.pid)
            child.link, child.ready = None, asyncio.Event()
            if self._stopping:
                return
            log.error(
                "delivery process died; restarting",
                child=child.name,
                exit_code=code,
                retry_in=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _serve(self, child: Child, link: Link) -> None:
        while True:
            try:
                message = await link.receive()
            except (ConnectionError, ValueError):
                message = None
            if message is None:
                return
            kind = message.get("t")
            if kind == "inv":
                await self.services.bus.publish(message["topic"], message["key"], origin=child.name)
            elif kind == "ready":
                child.ready.set()

    async def stop(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """SIGTERM every child (each drains within delivery.stop_timeout), then wait."""
        self._stopping = True
        if self.wake in self.services.on_enqueued:
            self.services.on_enqueued.remove(self.wake)
        procs = [c.proc for c in self.children if c.proc is not None and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waiting: asyncio.Future[Any] = asyncio.gather(*(p.wait() for p in procs))
        hurry_wait: asyncio.Future[Any] = asyncio.ensure_future((hurry or asyncio.Event()).wait())
        done, _ = await asyncio.wait(
            {waiting, hurry_wait}, timeout=timeout + 5, return_when=asyncio.FIRST_COMPLETED
        )
        hurry_wait.cancel()
        if waiting not in done:
            for proc in procs:
                if proc.returncode is None:
                    log.warning("killing delivery process", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await waiting
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for child in self.children:
            if child.link is not None:
                child.link.close()


class ChildBus(LocalBus):
    """The bus of a child process: local delivery plus the parent, which forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.link: Link | None = None
        self.name = os.environ.get("RELAY_CHILD_NAME", "child")

    async def publish(self, topic: str, key: str | int, origin: str | None = None) -> None:
        self._deliver(topic, str(key), origin)
        if self.link is not None:
            self.link.send({"t": "inv", "topic": topic, "key": str(key)})


async def run_delivery_child(settings: Settings, ipc_fd: int) -> None:
    """Entry point of a delivery child (`relay delivery-worker`, started by the parent only)."""
    from mta.worker import DeliveryService

    bus = ChildBus()
    services = await Services.create(settings, bus=bus, multi_process=True)
    link = await Link.from_socket(socket.socket(fileno=ipc_fd))
    bus.link = link
    await services.start()
    delivery = DeliveryService(services)
    await delivery.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when we stop.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    link.send({"t": "ready"})

    async def listen() -> None:
        while True:
            try:
                message = await link.receive()
            except (ConnectionError, ValueError):
                message = None
            if message is None:  # the parent is gone
                stop.set()
                return
            kind = message.get("t")
            if kind == "inv":
                bus._deliver(message["topic"], message["key"], "parent")
            elif kind == "wake":
                services.notify_enqueued()
            elif kind == "reset":
                bus._reset_all()

    listener = asyncio.create_task(listen(), name="parent-link")
    failed = asyncio.create_task(delivery.failed.wait(), name="delivery-failed")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    listener.cancel()
    for task in (failed, stopping):
        task.cancel()
    await delivery.stop(settings.delivery.stop_timeout)
    link.close()
    await services.close()
    if delivery.error is not None:
        # The parent restarts us: better than a node that accepts mail nobody delivers.
        raise SystemExit(1)
