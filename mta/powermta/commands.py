"""The ``relay pmta-accounting`` and ``relay pmta-sync`` commands (called from relay/cli.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

from relay import log as relay_log
from relay.config import Settings
from relay.node import build_node, require_head, schema_revision
from relay.services import Services

log = structlog.get_logger("mta.powermta")


def run(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """Like ``relay serve`` runs (logging, uvloop), without importing the admin app."""
    relay_log.configure(settings.log.format, settings.log.level)
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def _services(settings: Settings) -> Services:
    """Storage and the bus, with the schema these commands write checked (the embedded
    default is migrated, as ``relay serve`` does)."""
    # Other processes (relay serve's tree) write the same SQLite file: queue on its lock.
    node = await build_node(settings, multi_process=settings.is_embedded_default)
    services = node.services
    try:
        require_head(await schema_revision(services))
        await services.start()
    except BaseException:
        await services.close()
        raise
    return services


async def accounting(settings: Settings, files: list[str]) -> int:
    """Read the files (or standard input) to their end; 0, or 1 if a file was unreadable."""
    from mta.powermta.accounting import AccountingReader, writers

    services = await _services(settings)
    feedback = writers(services.db, services.bus, settings.powermta.accounting_connections)
    for writer in feedback:
        writer.start()
    reader = AccountingReader(
        feedback[0],
        files or ["-"],
        settings.powermta.suppress_categories,
        parallel_writers=feedback[1:],
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, reader.stop)
    try:
        counts = await reader.run()
    finally:
        for writer in feedback:
            await writer.stop()
        await services.close()
    return 1 if counts.unreadable else 0


async def sync(settings: Settings) -> int:
    from mta.powermta.sync import SyncError, apply, current_lists

    services = await _services(settings)
    try:
        lists = await current_lists(services)
    finally:
        await services.close()
    try:
        result = await asyncio.to_thread(apply, lists, settings.powermta)
    except (SyncError, OSError) as exc:
        print(f"pmta-sync: {exc}", file=sys.stderr)
        return 1
    for name in result.changed:
        print(f"pmta-sync: wrote {settings.powermta.include_dir}/{name}")
    if result.reloaded:
        print(f"pmta-sync: ran {settings.powermta.reload_command!r}")
    return 0
