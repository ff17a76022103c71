"""The process tree of `relay serve`: SMTP and delivery workers in child processes.

One Python process runs on one core. At full load SMTP ingest (aiosmtpd, checks, DKIM, group
commit) fills a core, and delivery (claims, aiosmtplib, outcome commits) most of another. So
`relay serve` keeps the admin app and an SMTP server in the main process and starts:
- ``smtp.processes - 1`` SMTP children, accepting on the very sockets the main process bound
  (inherited file descriptors: a busy process simply accepts less often), each with its own
  group-commit writer;
- ``delivery.processes`` delivery children (0 = delivery in the main process).

Parent and child talk over a socketpair, one JSON object per line:
- ``{"t": "inv", "topic": ..., "key": ...}`` both ways: a cache invalidation. The parent
  forwards each one to every other process (and to Redis, when configured), so a suppression a
  delivery child adds after a hard bounce reaches every SMTP process at once, and a route the
  admin changes reaches the delivery children at once.
- ``{"t": "enqueued"}`` SMTP child to parent: its writer committed new recipients.
- ``{"t": "wake"}`` parent to delivery child: someone committed new recipients (SQLite has no
  LISTEN/NOTIFY; on PostgreSQL the delivery children LISTEN as well).
- ``{"t": "reset"}`` parent to child: drop every cache (the parent lost its Redis subscription).
- ``{"t": "reload"}`` parent to child: SIGHUP reached the parent; reload (relay.reload).
- ``{"t": "ready"}`` child to parent: the child serves.
- ``{"t": "lim", ...}`` SMTP child to parent, ``{"t": "limr", ...}`` back: the node's limits,
  which the parent holds (relay.nodelimits).
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
from relay.node import Node, build_node, settle_gc
from relay.nodelimits import ParentLink
from relay.reload import Reloader
from relay.services import Services

log = structlog.get_logger("relay.procs")

READY_TIMEOUT = 60.0
DELIVERY, SMTP = "delivery", "smtp"


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
        try:
            line = await self.reader.readline()
            if not line:
                return None
            data: dict[str, Any] = json.loads(line)
        except (ConnectionError, ValueError):
            return None
        return data

    def close(self) -> None:
        self.writer.close()


class Child:
    def __init__(self, role: str, index: int) -> None:
        self.role = role
        self.name = f"{role}-{index}"
        self.proc: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready = asyncio.Event()
        self.wake_pending = False


class ChildProcesses:
    """Parent side: spawn, feed, forward to, restart and stop the children."""

    def __init__(
        self,
        services: Services,
        *,
        delivery: int = 0,
        smtp: int = 0,
        listen_fds: list[tuple[str, int]] | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.listen_fds = listen_fds or []
        self.children = [Child(DELIVERY, i) for i in range(delivery)]
        self.children += [Child(SMTP, i) for i in range(smtp)]
        self._stopping: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        services.bus.subscribe_all(self._forward)
        services.bus.on_reset(lambda: self._broadcast({"t": "reset"}))

    async def start(self) -> None:
        self.services.on_enqueued.append(self.wake)
        for child in self.children:
            self._tasks[child.name] = asyncio.create_task(self._supervise(child), name=child.name)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.ready.wait() for c in self.children)), READY_TIMEOUT
            )
        except TimeoutError:
            raise RuntimeError("worker processes did not become ready") from None

    # -- feeding -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New recipients were committed. Coalesced: one wake per delivery child per loop
        iteration, however many commits happened in it."""
        for child in self.children:
            if child.role == DELIVERY and child.link is not None and not child.wake_pending:
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

    def reload(self) -> None:
        """Pass a reload (SIGHUP) on to every running child."""
        self._broadcast({"t": "reload"})

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
            "worker",
            "--role",
            child.role,
            "--ipc-fd",
            str(child_sock.fileno()),
        ]
        fds = [child_sock.fileno()]
        if child.role == SMTP:
            for kind, fd in self.listen_fds:
                argv += ["--listen", f"{kind}:{fd}"]
                fds.append(fd)
        if self.settings.source:
            argv += ["-c", self.settings.source]
        child.proc = await asyncio.create_subprocess_exec(
            *argv, pass_fds=fds, env={**os.environ, "RELAY_CHILD_NAME": child.name}
        )
        child_sock.close()
        child.link = await Link.from_socket(parent_sock)
        log.info("worker process started", child=child.name, pid=child.proc.pid)

    async def _supervise(self, child: Child) -> None:
        backoff = 1.0
        while child.role not in self._stopping:
            try:
                await self._spawn(child)
            except OSError as exc:
                log.error("cannot start worker process", child=child.name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            assert child.link is not None and child.proc is not None
            await self._serve(child, child.link)
            code = await child.proc.wait()
            metrics.process_gone(child.proc.pid)
            if self.services.node_limits is not None:
                self.services.node_limits.holder_gone(child.name)
            child.link, child.ready = None, asyncio.Event()
            if child.role in self._stopping:
                return
            log.error(
                "worker process died; restarting",
                child=child.name,
                exit_code=code,
                retry_in=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _serve(self, child: Child, link: Link) -> None:
        while (message := await link.receive()) is not None:
            kind = message.get("t")
            if kind == "inv":
                await self.services.bus.publish(message["topic"], message["key"], origin=child.name)
            elif kind == "enqueued":
                self.services.notify_enqueued()
            elif kind == "ready":
                child.ready.set()
            elif kind == "lim" and self.services.node_limits is not None:
                answer = self.services.node_limits.handle(child.name, message)
                if answer is not None:
                    link.send(answer)

    async def stop(self, role: str, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """SIGTERM the children of ``role`` (each drains within its own bound), then wait."""
        self._stopping.add(role)
        if role == DELIVERY and self.wake in self.services.on_enqueued:
            self.services.on_enqueued.remove(self.wake)
        mine = [c for c in self.children if c.role == role]
        procs = [c.proc for c in mine if c.proc is not None and c.proc.returncode is None]
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
                    log.warning("killing worker process", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await waiting
        for child in mine:
            task = self._tasks.pop(child.name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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


async def run_child(
    settings: Settings, role: str, ipc_fd: int, listen: list[tuple[str, int]]
) -> int:
    """Entry point of a worker process (`relay worker`, started by `relay serve` only)."""
    bus = ChildBus()
    parent = ParentLink()
    node = await build_node(
        settings,
        ingest=role == SMTP,
        background=role == DELIVERY,
        bus=bus,
        parent=parent,
        multi_process=True,
    )
    services = node.services
    link = await Link.from_socket(socket.socket(fileno=ipc_fd))
    bus.link = parent.link = link
    await services.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when we stop.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    reloader = Reloader(settings)
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # A hangup of the terminal reaches the whole group: reload, as the parent does.
    loop.add_signal_handler(signal.SIGHUP, reload)

    async def listen_to_parent() -> None:
        while (message := await link.receive()) is not None:
            kind = message.get("t")
            if kind == "inv":
                bus._deliver(message["topic"], message["key"], "parent")
            elif kind == "wake":
                services.notify_enqueued()
            elif kind == "reset":
                bus._reset_all()
            elif kind == "reload":
                reload()
            elif kind == "limr":
                parent.resolve(message)
        stop.set()  # the parent is gone

    listener = asyncio.create_task(listen_to_parent(), name="parent-link")
    try:
        if role == DELIVERY:
            return await _delivery_child(node, link, stop)
        return await _smtp_child(node, link, stop, listen, reloader)
    finally:
        listener.cancel()
        link.close()
        await services.close()


async def _delivery_child(node: Node, link: Link, stop: asyncio.Event) -> int:
    services = node.services
    if services.settings.delivery.nice:
        # Acceptance is what clients wait on; delivery is background work that catches up.
        # When the cores are saturated the scheduler favours the SMTP processes; otherwise
        # this changes nothing. os.nice is setpriority(2): relay.service allows that one call
        # of @resources (lowering our own priority needs no privilege).
        try:
            os.nice(services.settings.delivery.nice)
        except OSError as exc:
            log.warning("cannot lower the delivery process priority", error=str(exc))

    delivery = node.delivery
    assert delivery is not None  # delivery processes exist only when delivery is enabled
    await node.start_background()
    settle_gc()
    link.send({"t": "ready"})
    failed = asyncio.create_task(delivery.failed.wait(), name="delivery-failed")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (failed, stopping):
        task.cancel()
    await node.stop_background()
    # A failed worker exits 1 so the parent restarts it: better than a node that accepts mail
    # nobody delivers.
    return 1 if delivery.error is not None else 0


async def _smtp_child(
    node: Node,
    link: Link,
    stop: asyncio.Event,
    listen: list[tuple[str, int]],
    reloader: Reloader,
) -> int:
    from relay.smtp.listener import SmtpServer

    services = node.services
    pending = False

    def enqueued() -> None:
        # One message to the parent per loop iteration, however many commits happened in it.
        nonlocal pending
        if not pending:
            pending = True
            asyncio.get_running_loop().call_soon(flush)

    def flush() -> None:
        nonlocal pending
        pending = False
        link.send({"t": "enqueued"})

    services.on_enqueued.append(enqueued)
    await node.start_ingest()
    assert node.submitter is not None
    smtp = SmtpServer(
        services, node.submitter, inherited=[(k, socket.socket(fileno=fd)) for k, fd in listen]
    )
    await smtp.start()
    reloader.tls_hooks.append(smtp.reload_tls)
    settle_gc()
    link.send({"t": "ready"})
    await stop.wait()
    await smtp.stop(services.settings.server.shutdown_timeout)
    await node.stop_ingest()
    return 0
