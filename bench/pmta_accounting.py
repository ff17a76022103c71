"""Records per second of ``relay pmta-accounting``.

    python -m bench.pmta_accounting [--records 100000] [--recipients 10] [--connections 2]
                                    [--database sqlite|postgres|both] [--pg-url URL]

Queues ``2 x records / recipients`` messages of ``--recipients`` recipients each (directly
through the queue writer), writes two PowerMTA accounting files naming them (every recipient
one record: 80% d, 10% t, 8% b of which half hard bounces, 2% f; PowerMTA's default column
set plus jobId, date-form times), then measures:

1. ``in-process``: the accounting reader over the first file (reading, parsing, commits
   through the feedback writer's group commit), start to last commit;
2. ``replay``: the same file again (every record a duplicate: nothing recorded);
3. ``pipe``: a real ``relay pmta-accounting`` process fed the second file through its
   standard input, as PowerMTA's ``<acct-file |program>`` does: once with the process's
   start (imports, connecting, the schema check) included, once from its first read (the
   ``seconds`` of its "accounting done" log line), which is the rate of a pipe that runs
   for days.

Prints records/s of each and the machine's load average before and after (the figures mean
little on a machine busy with something else), then the in-process and pipe (from its first
read) rates of each database against the target, ``TARGET`` (20,000 records/s).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TARGET = 20_000  # records/s, on a 2-core machine

HEADER = [
    "type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt", "dsnAction", "dsnStatus",
    "dsnDiag", "dsnMta", "bounceCat", "srcType", "srcMta", "dlvType", "dlvSourceIp",
    "dlvDestinationIp", "dlvEsmtpAvailable", "dlvSize", "vmta", "jobId", "envId", "queue",
    "vmtaPool", "feedbackType",
]  # fmt: skip
KINDS = (
    ("d", 80, "relayed", "2.0.0 (success)", "smtp;250 2.0.0 OK", ""),
    ("t", 10, "delayed", "4.2.2 (mailbox full)", "smtp;452 4.2.2 over quota", "quota-issues"),
    ("b", 4, "failed", "5.1.1 (bad destination mailbox address)", "smtp;550 5.1.1 unknown",
     "bad-mailbox"),
    ("b", 4, "failed", "5.7.1 (delivery not authorized)", "smtp;550 5.7.1 blocked",
     "spam-related"),
    ("f", 2, "", "", "", ""),
)  # fmt: skip


def _kind(i: int) -> tuple[str, str, str, str, str]:
    slot = i % 100
    for kind, share, action, status, diag, cat in KINDS:
        if slot < share:
            return kind, action, status, diag, cat
        slot -= share
    raise AssertionError


def accounting_file(jobs: list[tuple[str, list[str]]], start: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    n = 0
    for job, rcpts in jobs:
        for rcpt in rcpts:
            kind, action, status, diag, cat = _kind(n)
            logged = time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(start + n // 50))
            row = dict.fromkeys(HEADER, "")
            row.update(
                type=kind, timeLogged=logged, timeQueued=logged, orig="app@bench.example.com",
                rcpt=rcpt, dsnAction=action, dsnStatus=status, dsnDiag=diag,
                dsnMta="mx.bench.example (192.0.2.1)", bounceCat=cat, srcType="smtp",
                srcMta="relay (127.0.0.1)", dlvType="smtp", dlvSourceIp="192.0.2.2",
                dlvDestinationIp="192.0.2.1", dlvEsmtpAvailable="PIPELINING,SIZE,8BITMIME",
                dlvSize="2048", vmta="vmta-1", jobId=job, queue="bench.example/vmta-1",
                vmtaPool="pool-1", feedbackType="abuse" if kind == "f" else "",
            )  # fmt: skip
            writer.writerow([row[h] for h in HEADER])
            n += 1
    return out.getvalue().encode()


async def queue_messages(
    services: object, count: int, recipients: int
) -> list[tuple[str, list[str]]]:
    from relay.queue.ingest import QueueWriter
    from relay.queue.model import NewMessage
    from relay.services import Services

    assert isinstance(services, Services)
    writer = QueueWriter(services.db, on_commit=services.notify_enqueued)
    await writer.start()
    jobs = []
    try:
        batch = []
        for i in range(count):
            mid = uuid.uuid4().hex[:20]
            rcpts = [f"r{i}-{j}@rcpt{j % 7}.bench.example" for j in range(recipients)]
            jobs.append((mid, rcpts))
            batch.append(
                writer.submit(
                    NewMessage(
                        id=mid, user_id=1, domain_id=1, source="smtp",
                        mail_from="app@bench.example.com", recipients=rcpts,
                        body=b"From: app@bench.example.com\r\nSubject: b\r\n\r\nx\r\n",
                    )
                )
            )  # fmt: skip
            if len(batch) >= 500:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
    finally:
        await writer.stop()
    return jobs


async def run(
    database: str, url: str, records: int, recipients: int, connections: int
) -> dict[str, float]:
    """Measures one database; returns records/s by measurement (``in-process``, ``pipe``)."""
    from mta.powermta.accounting import AccountingReader, writers
    from relay import config
    from relay.services import Services
    from relay.store import migrate

    work = Path(tempfile.mkdtemp(prefix="pmta-bench-"))
    env = {
        "RELAY_DATA_DIR": str(work / "var"),
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_POWERMTA_ACCOUNTING_CONNECTIONS": str(connections),
    }
    if url:
        env["RELAY_DATABASE_URL"] = url
    settings = config.load(None, env=env)
    services = await Services.create(settings, multi_process=True)
    await migrate.upgrade(services.db)
    await services.start()
    messages = records // recipients
    t0 = time.monotonic()
    jobs = await queue_messages(services, 2 * messages, recipients)
    print(f"[{database}] queued {2 * messages} messages in {time.monotonic() - t0:.1f}s")
    first = work / "acct-1.csv"
    second = work / "acct-2.csv"
    first.write_bytes(accounting_file(jobs[:messages], 1_700_000_000))
    second.write_bytes(accounting_file(jobs[messages:], 1_700_100_000))
    total = messages * recipients

    rates: dict[str, float] = {}
    for label, path in (("in-process", first), ("replay", first)):
        # As `relay pmta-accounting` makes them (powermta.accounting_connections).
        feedback = writers(services.db, services.bus, connections)
        for writer in feedback:
            writer.start()
        reader = AccountingReader(
            feedback[0], [str(path)], ["bad-mailbox"], parallel_writers=feedback[1:]
        )
        t0 = time.monotonic()
        counts = await reader.run()
        for writer in feedback:
            await writer.stop()
        took = time.monotonic() - t0
        assert counts.lines == total and counts.malformed == 0, counts
        rates[label] = total / took
        print(
            f"[{database}] {label:10s} {total} records in {took:.2f}s: {total / took:,.0f}/s "
            f"(recorded {counts.recorded}, not recorded {counts.not_recorded})"
        )
    await services.close()

    relay_bin = str(Path(sys.executable).parent / "relay")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    child_env.update(env, RELAY_LOG_FORMAT="json", RELAY_LOG_LEVEL="info")
    t0 = time.monotonic()
    with open(second, "rb") as stdin:
        done = subprocess.run(
            [relay_bin, "pmta-accounting"], stdin=stdin, env=child_env, capture_output=True,
            timeout=600, check=False,
        )  # fmt: skip
    took = time.monotonic() - t0
    if done.returncode != 0:
        print(done.stderr.decode()[-2000:], file=sys.stderr)
        raise SystemExit(1)
    print(f"[{database}] {'pipe':10s} {total} records in {took:.2f}s: {total / took:,.0f}/s "
          "(a relay pmta-accounting process, start included)")  # fmt: skip
    for line in done.stdout.decode().splitlines() + done.stderr.decode().splitlines():
        if '"accounting done"' in line:
            seconds = json.loads(line)["seconds"]
            rates["pipe"] = total / seconds
            print(f"[{database}] {'pipe':10s} {total} records in {seconds:.2f}s: "
                  f"{total / seconds:,.0f}/s (the same process, from its first read)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--recipients", type=int, default=10)
    parser.add_argument(
        "--connections",
        type=int,
        default=2,
        help="powermta.accounting_connections: batches committed at once on PostgreSQL (2)",
    )
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgres", "both"))
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RELAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="an existing, empty PostgreSQL database (a fresh one is created next to it)",
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} cores")
    verdicts: list[str] = []
    for database in ("sqlite", "postgres") if args.database == "both" else (args.database,):
        url = ""
        if database == "postgres":
            url = asyncio.run(_fresh_pg(args.pg_url))
        try:
            rates = asyncio.run(run(database, url, args.records, args.recipients, args.connections))
        finally:
            if url:
                asyncio.run(_drop_pg(args.pg_url, url))
        for label, what in (("in-process", "in process"), ("pipe", "a pipe, from its first read")):
            rate = rates.get(label)
            if rate is not None:
                verdict = "meets" if rate >= TARGET else "below"
                verdicts.append(f"[{database}] {what}: {rate:,.0f}/s ({verdict} the target)")
    print(f"load average after: {os.getloadavg()}")
    print(f"target {TARGET:,} records/s:")
    for line in verdicts:
        print(f"  {line}")
    return 0


async def _fresh_pg(admin_url: str) -> str:
    import asyncpg

    name = f"pmta_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def _drop_pg(admin_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
