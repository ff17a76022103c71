"""The webhook worker alone: how fast one worker drains a backlog, and its CPU per webhook.

    python -m bench.webhook_worker [--webhooks 20000] [--endpoints 2] [--database sqlite]

bench/webhooks.py measures webhooks end to end while SMTP runs, where on a small machine the
webhook rate is bounded by the message rate. This one measures the worker's own capacity: a
fresh database (SQLite in a temporary directory, or a new PostgreSQL database), ``--webhooks``
delivered events written through the relay's queue writer (so the outbox trigger queues them as
in production) for ``--endpoints`` webhooks on the receiver of bench/webhook_receiver.py, then
one ``WebhookWorker`` (default settings, in this process, on uvloop) posts them all. Prints
webhooks/s from the worker's start to the last webhook received, and the CPU seconds of this
process (the worker and its database thread) per webhook. Every signature is checked at the
receiver; the exit status is 1 if a webhook is missing or fails verification.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.children import Child
from bench.loadgen import loop_factory
from bench.relay_target import DEFAULT_PG_ADMIN_URL, require_loopback


async def seed(services: Any, endpoints: list[str], count: int) -> None:
    from relay import events
    from relay.queue.ingest import QueueWriter
    from relay.queue.model import NewEvent

    async with services.db.write() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO users (id, email, group_id, api_key_hash, created_at, updated_at) "
            "VALUES (1, 'bench@example.com', 1, 'x', '2026-01-01', '2026-01-01')"
        )
        await conn.exec_driver_sql(
            "INSERT INTO gateway_domains (id, user_id, name, options, dkim_selector,"
            " dkim_private_key, dkim_public_key, signing_key, verification_meta, policy_meta,"
            " created_at, updated_at) VALUES (1, 1, 'example.com', '{}', 's', 'k', 'p',"
            " 'BENCHKEY', '{}', '[]', '2026-01-01', '2026-01-01')"
        )
        for url in endpoints:
            await conn.exec_driver_sql(
                "INSERT INTO webhooks (user_id, domain_id, event, url, status, created_at) "
                f"VALUES (1, 1, 'delivery', '{url}', 'Enabled', '2026-01-01')"
            )
    writer = QueueWriter(services.db, on_commit=services.notify_enqueued)
    await writer.start()
    try:
        for i in range(count // len(endpoints)):
            writer.record(
                NewEvent(
                    user_id=1,
                    domain_id=1,
                    event=events.DELIVERED,
                    recipient=f"r{i}@example.net",
                    smtp_code=250,
                    smtp_response="250 2.0.0 Ok",
                )
            )
    finally:
        await writer.stop()


async def run(args: argparse.Namespace) -> int:
    from relay import config
    from relay import log as relay_log
    from relay.services import Services
    from relay.store import migrate
    from relay.webhooks.worker import WebhookWorker

    tmp = Path(tempfile.mkdtemp(prefix="relay-webhook-worker-"))
    rx = await Child.start("webhook-receiver", "bench.webhook_receiver", log_dir=tmp)
    port = (await rx.read(30))["ready"]
    pg_database = ""
    url = f"sqlite+aiosqlite:///{tmp / 'relay.sqlite3'}"
    if args.database == "postgres":
        import asyncpg

        require_loopback(args.pg_admin_url.split("@")[-1].split("/")[0].split(":")[0], "pg")
        pg_database = f"relay_bench_wh_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(args.pg_admin_url)
        await conn.execute(f'CREATE DATABASE "{pg_database}"')
        await conn.close()
        url = args.pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url += f"/{pg_database}"
    settings = config.load(
        None,
        env={
            "RELAY_DATA_DIR": str(tmp),
            "RELAY_ADMIN_API_KEY": "adm_bench_webhook_worker_0123456789",
            "RELAY_DATABASE_URL": url,
            "RELAY_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8",
        },
    )
    relay_log.configure("console", "warning")
    services = await Services.create(settings)
    try:
        await migrate.upgrade(services.db)
        await services.start()
        endpoints = [f"http://127.0.0.1:{port}/hooks/{i}" for i in range(args.endpoints)]
        total = (args.webhooks // args.endpoints) * args.endpoints
        await seed(services, endpoints, total)
        await rx.ask("reset BENCHKEY")
        worker = WebhookWorker(services)
        cpu0, t0 = time.process_time(), time.monotonic()
        await worker.start()
        stats: dict[str, Any] = await rx.ask("stats")
        progress_at, seen = time.monotonic(), 0
        while stats["distinct"] < total and time.monotonic() - progress_at < args.stall:
            await asyncio.sleep(0.1)
            stats = await rx.ask("stats")
            if stats["posts"] != seen:
                progress_at, seen = time.monotonic(), stats["posts"]
        cpu1 = time.process_time()
        await worker.stop(10)
        # The receiver's clock is CLOCK_MONOTONIC too: the window ends at its last webhook.
        window = max(stats["last"] - t0, 1e-9)
        print(
            f"{stats['distinct']}/{total} webhooks to {args.endpoints} endpoint(s) in "
            f"{window:.2f} s: {stats['distinct'] / window:.0f} webhooks/s; worker process CPU "
            f"{1e6 * (cpu1 - cpu0) / max(stats['distinct'], 1):.0f} us per webhook "
            f"({args.database}; bad signatures {stats['bad_signatures']}, "
            f"duplicates {stats['duplicates']})"
        )
        ok = stats["distinct"] == total and not stats["bad_signatures"]
        return 0 if ok else 1
    finally:
        await services.close()
        await rx.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_database:
            import asyncpg

            conn = await asyncpg.connect(args.pg_admin_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')
            await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.webhook_worker", description=__doc__)
    p.add_argument("--webhooks", type=int, default=20000, help="webhooks to post (20000)")
    p.add_argument("--endpoints", type=int, default=2, help="webhooks subscribed (2)")
    p.add_argument("--database", default="sqlite", choices=("sqlite", "postgres"))
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    p.add_argument("--stall", type=float, default=20.0, help="give up after this long idle")
    args = p.parse_args(argv)
    if args.webhooks < 1 or args.endpoints < 1:
        p.error("--webhooks and --endpoints must be at least 1")
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
