"""One node builder: what a process of the relay runs, built the same way everywhere.

`relay serve` (relay/server.py), its worker processes (relay/procs.py), the PowerMTA commands
(mta/powermta/commands.py), the docs' example runner (tools/apidoc) and the tests build a
process here, so a part added to the node (a component the submitter needs, a step at worker
start) is added once.

What a process runs, in the order it starts:

- ``services``: storage, caches, bus, limits, secrets (relay/services.py). Always.
- the submission path, when the process accepts mail (an SMTP listener, the HTTP send API):
  ``writer`` (the group-commit QueueWriter), ``signer`` (DKIM) and ``submitter`` (with its
  tracker, given at ``start_ingest``), which the SMTP handler and the admin app's send
  commands share, so both produce identical messages.
- background work, when the process runs it: ``delivery`` (mta/worker.py) and ``webhooks``
  (relay/webhooks/worker.py), each when its settings enable it.

Front ends (SMTP, admin, tracking and MX listeners) are not built here: they take what is built
here. Who starts what and in which order around them is the runner's (relay/server.py for the
main process, relay/procs.py for worker processes); this module only builds, and starts or stops
one part at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mta.worker import DeliveryService
from relay.cache import LocalBus
from relay.config import ConfigError, Settings
from relay.dkim import DkimSigner
from relay.nodelimits import ParentLink
from relay.queue.ingest import QueueWriter
from relay.services import Services
from relay.store import migrate
from relay.submit import Submitter
from relay.tracking.render import Tracker
from relay.webhooks.worker import WebhookWorker


@dataclass
class Node:
    services: Services
    writer: QueueWriter | None = None
    signer: DkimSigner | None = None
    submitter: Submitter | None = None
    delivery: DeliveryService | None = None
    webhooks: WebhookWorker | None = None
    # Set once start_background began: a runner whose start failed before it stops only what
    # started (a delivery worker that never ran has no leases to release).
    _background_started: bool = field(default=False, repr=False)

    async def start_ingest(self) -> None:
        """Start the group-commit writer and give the submitter its tracker (the submitter is
        usable from then on)."""
        if self.writer is not None:
            await self.writer.start()
        if self.submitter is not None and self.signer is not None:
            # Before the first message: every message this process accepts (SMTP and the send
            # API, which share the submitter) is tracked per its domain's options. The key is
            # the cluster's (relay/tracking/keys.py), so any node's listener reads the links.
            self.submitter.tracker = await Tracker.create(self.services, self.signer)

    async def start_background(self) -> None:
        """Start delivery, then webhook posting (whichever this process runs)."""
        self._background_started = True
        if self.delivery is not None:
            await self.delivery.start()
        if self.webhooks is not None:
            await self.webhooks.start()

    async def stop_ingest(self) -> None:
        """Commit what is queued, then stop signing (after the listeners stopped taking mail)."""
        if self.writer is not None:
            await self.writer.stop()
        if self.signer is not None:
            # Joins the signing threads: not on the loop.
            await asyncio.to_thread(self.signer.close)

    async def stop_background(self, hurry: asyncio.Event | None = None) -> None:
        """Let deliveries and webhook posts in flight finish within their bounds."""
        if not self._background_started:
            return
        s = self.services.settings
        if self.delivery is not None:
            await self.delivery.stop(s.delivery.stop_timeout, hurry)
        if self.webhooks is not None:
            await self.webhooks.stop(s.webhooks.timeout, hurry)


async def build_node(
    settings: Settings,
    *,
    ingest: bool = False,
    background: bool = False,
    bus: LocalBus | None = None,
    parent: ParentLink | None = None,
    multi_process: bool = False,
) -> Node:
    """Build (not start) what one process runs. ``ingest``: it accepts mail. ``background``:
    it runs delivery and webhook posting, where the settings enable them. ``bus``, ``parent``
    and ``multi_process``: see ``Services.create`` (a worker process's links to the main one).
    """
    services = await Services.create(settings, bus=bus, multi_process=multi_process, parent=parent)
    node = Node(services)
    if ingest:
        # on_commit wakes this process's delivery worker, and the other processes' through
        # relay/procs.py (a callback each registered on services.on_enqueued).
        node.writer = QueueWriter(services.db, on_commit=services.notify_enqueued)
        node.signer = DkimSigner(settings.dkim.sign_threads)
        node.submitter = Submitter(services, node.writer, node.signer)
    if background and settings.delivery.enabled:
        node.delivery = DeliveryService(services)
    if background and settings.webhooks.enabled:
        node.webhooks = WebhookWorker(services)
    return node


# Young-generation threshold of the cyclic garbage collector once a process serves (CPython's
# default is 700 allocations).
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Once a process is built and serving: move everything made at start (modules, the admin
    app, caches) out of the collector's sight (``gc.freeze``) and collect young objects less
    often. Reference counting frees almost everything a request or a message makes; the
    collector only finds cycles, and with the defaults its full passes over the start-up heap
    paused the loop for tens of milliseconds: the tracking listener's p99 at 4,500 requests/s
    was 30-90 ms with the defaults and 8-9 ms with this (bench/tracking.py --rate)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


async def schema_revision(services: Services) -> str | None:
    """The schema's revision, for a process about to use the database: the embedded default is
    migrated first (``relay serve`` and the commands that write do it themselves); any other
    database is only read (``relay migrate`` upgrades it)."""
    if services.settings.is_embedded_default:
        await migrate.upgrade(services.db)
        return migrate.head_revision()
    return await migrate.current_revision(services.db)


def require_head(current: str | None) -> None:
    """Refuse a schema this version was not written for."""
    if current != migrate.head_revision():
        raise ConfigError(
            [
                f"database schema is at {current or 'nothing'}, this version needs "
                f"{migrate.head_revision()}: run `relay migrate` first"
            ]
        )


@contextlib.asynccontextmanager
async def running_node(
    settings: Settings, *, ingest: bool = False, background: bool = False
) -> AsyncIterator[Node]:
    """A node in the caller's event loop, for the docs' example runner and the tests: storage
    migrated to head, then the parts asked for started; all stopped in reverse on exit."""
    node = await build_node(settings, ingest=ingest, background=background)
    try:
        await migrate.upgrade(node.services.db)
        await node.services.start()
        try:
            await node.start_ingest()
            await node.start_background()
            yield node
        finally:
            await node.stop_background()
            await node.stop_ingest()
    finally:
        await node.services.close()
