"""relay pmta-accounting: PowerMTA accounting CSV -> events and suppressions.

The parsing pieces on their own, then the whole loop: messages sent through the relay to a
PowerMTA delivery server (a sink that records the X-Job it receives), accounting records
(tests/fixtures/powermta/, shaped like PowerMTA's, in both time formats) naming those job ids,
fed to a real `relay pmta-accounting` process through a pipe written over time, as PowerMTA's
`<acct-file |program>` does; then replays of the same records from files, which record
nothing twice. On SQLite and PostgreSQL, with Redis carrying the suppression invalidation to
the relay process.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import os
import random
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mta.powermta.accounting import Counts, RecordParser, RecordSplitter, _Source
from mta.powermta.records import (
    Columns,
    Malformed,
    diagnostic,
    parse_time,
    to_feedback,
)
from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import suppressed
from tests.provision import wait_until
from tests.relayfix import RunningRelay, start_relay, stop_relay
from tests.sink import Sink
from tests.test_api_deliveryservers import CREATE

FIXTURES = Path(__file__).parent / "fixtures" / "powermta"
RELAY_BIN = str(Path(sys.executable).parent / "relay")
HARD = ("bad-mailbox", "bad-domain", "inactive-mailbox")


def _records(data: bytes, chunk: int) -> tuple[list[tuple[int, str]], list[int]]:
    splitter = RecordSplitter(max_record=4096, max_lines=4)
    out: list[tuple[int, str]] = []
    for i in range(0, len(data), chunk):
        out += splitter.feed(data[i : i + chunk])
    out += splitter.finish()
    return out, splitter.dropped


# -- pieces ----------------------------------------------------------------------------------


def test_splitter_gives_the_same_records_whatever_the_chunks() -> None:
    data = (FIXTURES / "acct-iso.csv").read_bytes()
    whole, dropped = _records(data, len(data))
    assert dropped == []
    assert len(whole) == 13  # header + 12 records; one record spans two physical lines
    assert [n for n, _ in whole][:4] == [1, 2, 3, 4]
    assert "\n421 4.7.0 due to" in whole[3][1]
    for chunk in (1, 2, 7, 100, 4096):
        assert _records(data, chunk) == (whole, []), chunk


def test_splitter_drops_overlong_lines_and_stray_quotes_but_keeps_the_rest() -> None:
    data = (
        b"type,rcpt\r\n"
        + b"d," + b"x" * 5000 + b"\r\n"  # too long: dropped
        + b"d,a@example.net\r\n"
        + b'd,"unterminated\r\n'  # stray quote: swallows at most 4 lines, then recovers
        + b"d,b@example.net\r\nd,c@example.net\r\nd,d@example.net\r\nd,e@example.net\r\n"
        + b"d,no-newline-at-end@example.net"
    )  # fmt: skip
    for chunk in (1, 3, 64, len(data)):
        records, dropped = _records(data, chunk)
        texts = [text for _, text in records]
        assert texts == [
            "type,rcpt",
            "d,a@example.net",
            "d,b@example.net",
            "d,c@example.net",
            "d,d@example.net",
            "d,e@example.net",
            "d,no-newline-at-end@example.net",
        ], chunk
        assert dropped == [2, 4], chunk


def test_times_in_both_formats() -> None:
    assert parse_time("1740903302") == 1740903302.0
    assert parse_time("2025-03-02 09:15:02+0100") == 1740903302.0
    assert parse_time("2025-03-02 06:45:02-0130") == 1740903302.0
    for bad in ("02/03/2025 09:15", "2025-13-02 09:15:02+0000", "2025-03-02T09:15:02+0000", ""):
        with pytest.raises(Malformed):
            parse_time(bad)


def test_diagnostic_codes() -> None:
    assert diagnostic("smtp;550 5.1.1 no such user") == (550, "550 5.1.1 no such user")
    assert diagnostic("SMTP; 421-4.7.0 try later") == (421, "421-4.7.0 try later")
    assert diagnostic("550 bare") == (550, "550 bare")
    assert diagnostic("X-Unix; something odd") == (None, "something odd")


def _parse(text: str) -> tuple[list[Any], Counts]:
    counts = Counts()
    parser = RecordParser(counts, HARD)
    records, _ = _records(text.encode(), 1 << 20)
    return parser.parse(_Source("t"), records), counts


def test_columns_by_name_in_any_order_and_header_x_job() -> None:
    items, counts = _parse(
        "type,bounceCat,header_X-Job,dsnStatus,rcpt,timeLogged\r\n"
        "b,bad-mailbox,q-1,5.1.1 (bad destination mailbox address),<A@Example.net>,1740903302\r\n"
        "b,quota-issues,q-1,5.2.2 (mailbox full),b@example.net,1740903303\r\n"
    )
    assert counts.malformed == 0
    first, second = (i.feedback for i in items)
    assert (first.message_id, first.recipient, first.event) == ("q-1", "A@Example.net", "bounced")
    assert first.suppress == "bounce"
    assert first.suppress_reason == "bad-mailbox: 5.1.1 (bad destination mailbox address)"
    assert first.data == {
        "source": "powermta",
        "record": "b",
        "BounceCategory": "bad-mailbox",
        "DSNStatus": "5.1.1 (bad destination mailbox address)",
    }
    assert first.created_at == 1740903302.0
    assert second.suppress is None and second.smtp_code is None
    assert second.smtp_response == "5.2.2 (mailbox full)"


def test_malformed_and_ignored_lines_are_counted_not_fatal() -> None:
    items, counts = _parse(
        "d,before-any-header@example.net\r\n"
        "type,rcpt,jobId,timeLogged\r\n"
        "d,a@example.net,q-1,1740903302\r\n"
        "d,short-row@example.net\r\n"
        "x,a@example.net,q-1,1740903302\r\n"
        "d,,q-1,1740903302\r\n"
        "d,a@example.net,,1740903302\r\n"
        "d,a@example.net,q-1,yesterday\r\n"
        "r,a@example.net,q-1,1740903302\r\n"
        "tq,a@example.net,q-1,1740903302\r\n"
        "type,rcpt\r\n"  # a header without jobId: unusable, so is what follows it
        "d,a@example.net\r\n"
        "type,jobId,rcpt\r\n"
        "t,q-2,b@example.net\r\n"
        # A stray quote, closed by another on the next line: one record that is not CSV.
        'd,q-3,a"b@example.net\r\n'
        'd,q-4,c@example.net"\r\n'
        "d,q-5,d@example.net\r\n"
    )
    assert [(i.line, i.feedback.message_id) for i in items] == [
        (3, "q-1"),
        (14, "q-2"),
        (17, "q-5"),
    ]
    assert (counts.lines, counts.malformed, counts.ignored) == (13, 9, 2)


def test_every_record_type_of_the_fixture_maps_as_documented() -> None:
    cols_rows = list(csv.reader(io.StringIO((FIXTURES / "acct-unix.csv").read_text())))
    cols = Columns.of(cols_rows[0])
    mapped = [to_feedback(cols, row, HARD) for row in cols_rows[1:]]
    summary = [
        (f.event, f.recipient, f.suppress, f.smtp_code) if f is not None else None for f in mapped
    ]
    assert summary == [
        None,  # r: received, says nothing about an outcome
        ("accepted-by-mta", "alice@example.net", None, 250),
        ("deferred", "bob@example.org", None, 421),
        ("deferred", "carol@example.com", None, 452),
        ("bounced", "nosuchuser@example.net", "bounce", 550),
        ("bounced", "dave@no-such-domain.example", "bounce", 550),
        ("bounced", "erin@example.org", None, 550),
        ("bounced", "carol@example.com", None, 452),
        ("accepted-by-mta", "frank@example.com", None, 250),
        ("complained", "frank@example.com", "complaint", None),
        ("bounced", "grace@example.net", "bounce", 550),
        ("accepted-by-mta", "someone@example.net", None, 250),
    ]
    iso = list(csv.reader(io.StringIO((FIXTURES / "acct-iso.csv").read_text())))
    iso_keys = [
        f.dedupe_key if (f := to_feedback(Columns.of(iso[0]), r, HARD)) else None for r in iso[1:]
    ]
    # The same record in the other time format has the same key; different records do not.
    assert iso_keys == [f.dedupe_key if f else None for f in mapped]
    keys = [k for k in iso_keys if k]
    assert len(set(keys)) == len(keys)


class _FlakyWriter:
    """A FeedbackWriter stand-in for failures the real database will not produce on demand:
    the first ``outage`` commits fail, and any commit holding a ``poison`` item fails."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.recorded: list[str] = []
        self.db = self

    async def ping(self) -> None:
        from relay.store.db import StorageUnavailable

        if self.outage > 0:
            raise StorageUnavailable("database down")

    async def record_prepared(self, rows: list[Any]) -> list[bool]:
        """Rows as relay.queue.feedback.prepare makes them (the queue id second)."""
        from relay.store.db import StorageUnavailable

        if self.outage > 0:
            self.outage -= 1
            raise StorageUnavailable("database down")
        if any(row[1] == "poison" for row in rows):
            raise StorageUnavailable("value too long")
        self.recorded += [row[1] for row in rows]
        return [True] * len(rows)


async def test_outages_are_retried_and_an_unstorable_record_is_isolated(tmp_path: Path) -> None:
    from mta.powermta.accounting import AccountingReader

    first = tmp_path / "a.csv"
    first.write_text("type,jobId,rcpt\n" + "".join(f"d,job-{i},r@example.net\n" for i in range(6)))
    second = tmp_path / "b.csv"
    second.write_text("type,jobId,rcpt\nd,ok-1,r@example.net\nd,poison,r@example.net\n")
    writer = _FlakyWriter(outage=6)
    reader = AccountingReader(
        writer,  # type: ignore[arg-type]
        [str(first), str(second)],
        HARD,
        retry_delays=(0.01,),
    )
    counts = await asyncio.wait_for(reader.run(), 60)
    # Nothing lost to the outage; only the record that cannot be stored is skipped.
    assert sorted(writer.recorded) == sorted([f"job-{i}" for i in range(6)] + ["ok-1"])
    assert (counts.recorded, counts.failed, counts.lines) == (7, 1, 8)


# -- the whole loop --------------------------------------------------------------------------

RECIPIENTS = {
    "JOB-A": ["alice@example.net", "bob@example.org", "carol@example.com", "nosuchuser@example.net"],
    "JOB-B": ["dave@no-such-domain.example", "erin@example.org", "frank@example.com",
              "grace@example.net"],
}  # fmt: skip
# In the event log's order (time, then id): PowerMTA's records keep its timeLogged (2025),
# before the hand-off to it, which this test made today. Commit order does not show here: with
# several connections (PostgreSQL) consecutive batches may commit in either order.
EXPECTED_EVENTS = {
    "alice@example.net": ["accepted-by-mta", "delivered"],
    "bob@example.org": ["deferred", "delivered"],
    "carol@example.com": ["deferred", "bounced", "delivered"],
    "nosuchuser@example.net": ["bounced", "suppressed", "delivered"],
    "dave@no-such-domain.example": ["bounced", "suppressed", "delivered"],
    "erin@example.org": ["bounced", "delivered"],
    "frank@example.com": ["accepted-by-mta", "complained", "suppressed", "delivered"],
    "grace@example.net": ["bounced", "suppressed", "delivered"],
}


async def _send_through_powermta(
    running: RunningRelay, sink: Sink
) -> tuple[dict[str, str], tuple[str, str]]:
    """Two messages through a PowerMTA delivery server: placeholder -> the X-Job it got, and
    the SMTP credential used."""
    acct = await running.new_account()
    made = await running.api.call(
        "deliveryserver.create",
        admin=True,
        **{
            **CREATE,
            "SendMethodSMTPHost": "127.0.0.1",
            "SendMethodSMTPPort": sink.port,
            "SendMethodSMTPSecure": "false",
            "SendMethodSMTPAuth": False,
            "PowerMTA": 1,
        },
    )
    assigned = await running.api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=made["DeliveryServerID"],
        UserGroupID=1,
    )
    assert assigned["Success"], assigned

    def send(rcpts: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as c:
            c.login(acct.username, acct.password)
            c.sendmail(
                "app@example.com", rcpts, b"From: app@example.com\r\nSubject: o\r\n\r\nx\r\n"
            )

    jobs: dict[str, str] = {}
    for placeholder, rcpts in RECIPIENTS.items():
        await asyncio.to_thread(send, rcpts)
        # One transaction per recipient (each has its own VERP return path), all with the
        # message's X-Job.
        await sink.wait_for(
            lambda s, r=rcpts: set(r) <= {x for m in s.messages for x in m.rcpt_tos}
        )
        firsts = {
            m.data.split(b"\r\n", 1)[0].decode() for m in sink.messages if m.rcpt_tos[0] in rcpts
        }
        (first,) = firsts
        assert first.startswith("X-Job: "), first
        jobs[placeholder] = first.removeprefix("X-Job: ")
    return jobs, (acct.username, acct.password)


def _fixture(name: str, jobs: dict[str, str]) -> bytes:
    text = (FIXTURES / name).read_bytes()
    for placeholder, job in jobs.items():
        text = text.replace(placeholder.encode(), job.encode())
    return text


async def _events(services: Services) -> dict[str, list[str]]:
    e = t.events
    async with services.db.read() as conn:
        rows = (
            await conn.execute(
                select(e.c.recipient, e.c.event)
                .where(e.c.event != "accepted")
                .order_by(e.c.created_at, e.c.id)
            )
        ).all()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.recipient, []).append(row.event)
    return out


def _summary(log_file: Path) -> dict[str, Any]:
    for line in reversed(log_file.read_text().splitlines()):
        if '"accounting done"' in line:
            entry: dict[str, Any] = json.loads(line)
            return entry
    raise AssertionError(f"no summary in {log_file.read_text()[-2000:]}")


def _env(running: RunningRelay, tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=running.settings.database_url,
        RELAY_DATA_DIR=str(tmp_path / "acct-var"),
        RELAY_REDIS_URL=redis_url,
        RELAY_LOG_FORMAT="json",
    )
    return env


async def test_pipe_records_each_record_once_and_suppresses(
    tmp_path: Path, db_url: str, redis_url: str, sink: Sink
) -> None:
    running, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_DELIVERY_ENABLED="true",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
        RELAY_REDIS_URL=redis_url,
    )
    services = running.relay.services
    assert services is not None
    proc: subprocess.Popen[bytes] | None = None
    try:
        jobs, credential = await _send_through_powermta(running, sink)

        async def delivered() -> bool:
            return sum(v.count("delivered") for v in (await _events(services)).values()) == 8

        await wait_until(delivered, what="hand-offs recorded")
        iso = _fixture("acct-iso.csv", jobs)
        header, rest = iso.split(b"\r\n", 1)
        lines = rest.split(b"\r\n")
        log_file = tmp_path / "pipe.log"
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(
                [RELAY_BIN, "pmta-accounting"],
                stdin=subprocess.PIPE,
                stderr=err,
                env=_env(running, tmp_path, redis_url),
            )
        assert proc.stdin is not None
        pipe = proc.stdin

        def write(data: bytes) -> None:
            pipe.write(data)
            pipe.flush()

        # PowerMTA starts the program and sends the header; records follow as they happen.
        await asyncio.to_thread(write, header + b"\r\n")
        await asyncio.to_thread(write, lines[0] + b"\r\n" + lines[1] + b"\r\n")  # r, d alice

        async def alice_recorded() -> bool:
            return "accepted-by-mta" in (await _events(services)).get("alice@example.net", [])

        # Recorded while the pipe stays open and nothing else comes.
        await wait_until(alice_recorded, what="a lone record committed promptly")
        rest_bytes = b"\r\n".join(lines[2:])
        middle = len(rest_bytes) // 2  # a record split across two writes
        await asyncio.to_thread(write, rest_bytes[:middle])
        await asyncio.sleep(0.2)
        await asyncio.to_thread(write, rest_bytes[middle:])
        # A broken line, and the whole file again (PowerMTA restarted the program).
        await asyncio.to_thread(write, b"b,not,enough,columns\r\n" + iso)
        await asyncio.to_thread(pipe.close)
        assert await asyncio.to_thread(proc.wait, 60) == 0

        assert await _events(services) == EXPECTED_EVENTS
        summary = _summary(log_file)
        # Read twice: 10 records of our messages, 1 of an unknown job, 1 `r` (ignored); and
        # one broken line.
        assert (summary["recorded"], summary["not_recorded"]) == (10, 1 + 11)
        assert (summary["malformed"], summary["ignored"], summary["lines"]) == (1, 2, 25)

        assert await suppressed(services) == [
            ("dave@no-such-domain.example", "bounce"),
            ("frank@example.com", "complaint"),
            ("grace@example.net", "bounce"),
            ("nosuchuser@example.net", "bounce"),
        ]
        e = t.events
        async with services.db.read() as conn:
            bounce = (
                await conn.execute(
                    select(e.c.smtp_code, e.c.smtp_response, e.c.data, e.c.created_at).where(
                        e.c.recipient == "nosuchuser@example.net", e.c.event == "bounced"
                    )
                )
            ).one()
        assert bounce.smtp_code == 550
        assert bounce.smtp_response.startswith("550 5.1.1 <nosuchuser@example.net>")
        assert bounce.data["BounceCategory"] == "bad-mailbox"
        assert bounce.data["DSNStatus"] == "5.1.1 (bad destination mailbox address)"
        assert bounce.data["DSNDiag"].startswith("smtp;550 5.1.1")
        assert bounce.created_at == 1740903304.0  # PowerMTA's timeLogged

        # The relay process heard of the suppression (Redis): the next RCPT is refused.
        def refused() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as c:
                    c.login(*credential)
                    c.sendmail("app@example.com", ["nosuchuser@example.net"], b"Subject: x\r\n\r\n")
            except smtplib.SMTPRecipientsRefused as exc:
                return exc.recipients["nosuchuser@example.net"][0] == 550
            return False

        assert await asyncio.to_thread(refused)

        # Replays from files: the rotated file again, and the same records in the other time
        # format, compressed: nothing is recorded twice.
        async def refusal_recorded() -> bool:
            return "rejected" in (await _events(services))["nosuchuser@example.net"]

        await wait_until(refusal_recorded, what="the rejected event")
        before = await _events(services)
        iso_file = tmp_path / "acct-2025-03-02.csv"
        iso_file.write_bytes(iso)
        unix_file = tmp_path / "acct-2025-03-02-unix.csv.gz"
        unix_file.write_bytes(gzip.compress(_fixture("acct-unix.csv", jobs)))
        log2 = tmp_path / "files.log"
        with open(log2, "wb") as err:
            done = await asyncio.to_thread(
                subprocess.run,
                [RELAY_BIN, "pmta-accounting", str(iso_file), str(unix_file)],
                stdin=subprocess.DEVNULL,
                stderr=err,
                env=_env(running, tmp_path, redis_url),
                timeout=60,
            )
        assert done.returncode == 0
        assert (_summary(log2)["recorded"], _summary(log2)["not_recorded"]) == (0, 22)
        assert await _events(services) == before
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await stop_relay(running, session)


# -- several connections ---------------------------------------------------------------------


async def test_parallel_writers_record_each_record_once_under_contention(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL commits batches on several connections at once (powermta.accounting_
    connections). Two readers of the same records at once (the second file shuffled), over the
    writers in different turns, make batches contend for the same keys and suppressions in
    different orders: each record is still recorded exactly once, every hard bounce suppressed,
    no commit fails and none deadlocks; SQLite gets one writer whatever is asked."""
    from mta.powermta import accounting
    from tests.test_feedback import _queue

    jobs = {f"job-{m}": [f"r{r}@example.net" for r in range(5)] for m in range(120)}
    for job, rcpts in jobs.items():
        await _queue(services, job, rcpts)
    lines = ["type,timeLogged,jobId,rcpt,bounceCat,dsnStatus"]
    for m, (job, rcpts) in enumerate(jobs.items()):
        for r, rcpt in enumerate(rcpts):
            # Every address is in every message: the hard bounces of different messages
            # suppress the same five addresses, batch after batch.
            kind = (
                "b,1740903302,{job},{rcpt},bad-mailbox,5.1.1"
                if (m + r) % 4 == 0
                else ("d,1740903302,{job},{rcpt},,2.0.0")
            )
            lines.append(kind.format(job=job, rcpt=rcpt))
    path = tmp_path / "acct.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    shuffled = lines[1:]
    random.Random(7).shuffle(shuffled)
    replay = tmp_path / "acct-shuffled.csv"
    replay.write_text("\r\n".join([lines[0], *shuffled]) + "\r\n")
    records = len(lines) - 1
    bounces = sum(1 for line in lines if line.startswith("b,"))
    monkeypatch.setattr(accounting, "HAND_OVER", 5)  # many small batches

    async def deadlocks() -> int:
        if services.db.is_sqlite:
            return 0
        async with services.db.read() as conn:
            found = await conn.exec_driver_sql(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
            return int(found.scalar() or 0)

    deadlocked = await deadlocks()
    feedback = accounting.writers(services.db, services.bus, 3)
    assert len(feedback) == (1 if services.db.is_sqlite else 3)
    for writer in feedback:
        writer.start()
    try:
        readers = [
            accounting.AccountingReader(
                turn[0], [str(source)], HARD, parallel_writers=turn[1:], retry_delays=(0.01,)
            )
            for turn, source in ((feedback, path), (feedback[::-1], replay))
        ]
        first, second = await asyncio.wait_for(asyncio.gather(*(r.run() for r in readers)), 120)
    finally:
        for writer in feedback:
            await writer.stop()
    assert first.recorded + second.recorded == records
    assert first.not_recorded + second.not_recorded == records
    assert first.failed == second.failed == 0
    # The writers' connections are closed: their statistics are in (a deadlock would have been
    # retried, so the counts above cannot tell).
    assert await deadlocks() == deadlocked
    e = t.events
    async with services.db.read() as conn:
        kinds = (
            await conn.execute(
                select(e.c.event, e.c.message_id, e.c.recipient).where(e.c.event != "accepted")
            )
        ).all()
    assert len(kinds) == records + bounces  # each record's event, a bounce's `suppressed` too
    assert len(
        {(k.event, k.message_id, k.recipient) for k in kinds if k.event != "suppressed"}
    ) == (records)
    assert await suppressed(services) == [(f"r{r}@example.net", "bounce") for r in range(5)]
