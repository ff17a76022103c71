"""``relay pmta-accounting``: PowerMTA accounting records in, events and suppressions out.

Reads the CSV PowerMTA writes, from files (rotated ones too, ``.gz`` included) or from
standard input, which is what ``<acct-file |/usr/bin/relay pmta-accounting>`` connects: a
header line when PowerMTA starts the program, then records as they happen, for days.

- A reader thread reads whatever the stream has (``os.read``: on a slow pipe a single record
  is handed on at once, on a file 256 KiB at a time), cuts it into records (a quoted field
  may hold a line break), parses them by column name (``records.py``) and hands each chunk's
  items to the event loop through a small bounded queue, so a stream that never ends uses
  bounded memory and a slow database slows the reading down instead of piling records up.
- The loop commits each chunk through the ``FeedbackWriter`` (its group commit merges the
  chunks in flight into one transaction). Every item carries a dedupe key, so a replayed pipe
  or overlapping files record nothing twice.
- A malformed line or a record of no message we know is counted, logged (sampled: at most
  ``LOG_SAMPLE`` lines a minute per kind, without addresses) and skipped, never fatal.
- A commit that fails is retried with backoff for as long as the database is unreachable (an
  outage loses nothing while the process runs); a chunk that keeps failing while the database
  answers is split until the record that cannot be stored is found, logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import itertools
import os
import select
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import structlog

from mta.powermta.records import Columns, Malformed, is_header, to_feedback
from relay.cache import LocalBus
from relay.queue.feedback import Feedback, FeedbackWriter, prepare
from relay.queue.model import FeedbackRow
from relay.store.db import Database, StorageUnavailable

log = structlog.get_logger("mta.powermta.accounting")

PIPE_CHUNK = 64 * 1024
FILE_CHUNK = 256 * 1024
MAX_RECORD = 64 * 1024  # bytes of one record; a longer line is malformed
MAX_RECORD_LINES = 16  # physical lines of one record (line breaks inside quoted fields)
HAND_OVER = 4000  # records per hand-over to the loop while more are waiting
COMMIT_BATCH = 8000  # records per commit (the feedback writer's group commit merges hand-overs)
LOG_SAMPLE = 20  # individual log lines per minute and kind; the rest are only counted


@dataclass
class Counts:
    lines: int = 0  # records read (data lines, headers excluded)
    recorded: int = 0
    not_recorded: int = 0  # unknown message or recipient, or recorded before
    malformed: int = 0
    ignored: int = 0  # record types that say nothing about an outcome (r, tq, rs)
    failed: int = 0  # could not be stored (see the module docstring)
    unreadable: int = 0  # sources that could not be opened or read

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Sampler:
    """At most ``limit`` log lines per ``window`` seconds for one kind of problem."""

    def __init__(self, limit: int = LOG_SAMPLE, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._start = 0.0
        self._n = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start >= self.window:
            self._start, self._n = now, 0
        self._n += 1
        return self._n <= self.limit


class RecordSplitter:
    """Bytes as they arrive -> complete records as (line number, text).

    A record ends at a line break outside double quotes (RFC 4180 2.6: a quoted field may hold
    line breaks). A record longer than ``max_record`` bytes or ``max_lines`` lines (a stray
    quote would otherwise swallow the rest of the stream) is dropped: ``dropped`` counts them,
    and the lines after the first are read again as records of their own.
    """

    def __init__(self, max_record: int = MAX_RECORD, max_lines: int = MAX_RECORD_LINES) -> None:
        self.max_record = max_record
        self.max_lines = max_lines
        self.dropped: list[int] = []  # line numbers, taken by the caller
        self._partial = b""
        self._discarding = False  # inside an overlong line: skip to its end
        self._line = 0
        self._pending: list[str] = []
        self._pending_size = 0
        self._pending_line = 0

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        if self._discarding:  # the rest of an overlong line (already counted as dropped)
            end = data.find(b"\n")
            if end < 0:
                return out
            data = data[end + 1 :]
            self._discarding = False
            self._line += 1
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line += 1
            if len(raw) > self.max_record:
                self.dropped.append(self._line)
                continue
            self._push(self._line, raw.decode("utf-8", "replace").rstrip("\r"), out)
        if len(self._partial) > self.max_record:
            self.dropped.append(self._line + 1)
            self._partial = b""
            self._discarding = True
        return out

    def finish(self) -> list[tuple[int, str]]:
        """At the end of the stream: the last line without a line break, then what is left
        of an unterminated quoted record (dropped)."""
        out: list[tuple[int, str]] = []
        if self._discarding:
            self._line += 1
            self._discarding = False
        elif self._partial:
            self._line += 1
            self._push(self._line, self._partial.decode("utf-8", "replace").rstrip("\r"), out)
        self._partial = b""
        if self._pending:
            self.dropped.append(self._pending_line)
            rest = self._pending[1:]
            self._pending, self._pending_size = [], 0
            first = self._pending_line + 1
            for n, text in enumerate(rest):
                self._push(first + n, text, out)
            if self._pending:
                self.dropped.append(self._pending_line)
                self._pending, self._pending_size = [], 0
        return out

    def _push(self, number: int, text: str, out: list[tuple[int, str]]) -> None:
        odd = text.count('"') & 1
        if not self._pending:
            if not odd:
                if text:
                    out.append((number, text))
                return
            self._pending, self._pending_size, self._pending_line = [text], len(text), number
            return
        self._pending.append(text)
        self._pending_size += len(text) + 1
        if odd:  # the quote opened on the first line closes here
            out.append((self._pending_line, "\n".join(self._pending)))
            self._pending, self._pending_size = [], 0
            return
        if len(self._pending) > self.max_lines or self._pending_size > self.max_record:
            self.dropped.append(self._pending_line)
            rest = self._pending[1:]
            first = self._pending_line + 1
            self._pending, self._pending_size = [], 0
            for n, line in enumerate(rest):
                self._push(first + n, line, out)


@dataclass(slots=True)
class Item:
    feedback: Feedback
    source: str
    line: int
    row: FeedbackRow  # what the writer commits (relay.queue.feedback.prepare)


@dataclass
class _Source:
    name: str
    columns: Columns | None = None


class RecordParser:
    """Records of one source -> feedback items; counts and logs what it skips."""

    def __init__(self, counts: Counts, suppressing: Sequence[str]) -> None:
        self.counts = counts
        self.suppressing = frozenset(c.lower() for c in suppressing)
        self._malformed_log = _Sampler()

    def malformed(self, source: _Source, line: int, why: str) -> None:
        self.counts.malformed += 1
        if self._malformed_log.allow():
            log.warning("accounting line skipped", source=source.name, line=line, reason=why)

    def parse(self, source: _Source, records: list[tuple[int, str]]) -> list[Item]:
        found: list[tuple[Feedback, int]] = []
        if not records:
            return []
        try:
            rows: list[list[str] | None] = list(csv.reader([text for _, text in records]))
        except csv.Error:  # one bad record spoils the batch: parse them one by one
            rows = [_one_row(text) for _, text in records]
        for (line, _text), row in zip(records, rows, strict=True):
            if row is None:
                self.counts.lines += 1
                self.malformed(source, line, "not CSV")
                continue
            if is_header(row):
                try:
                    source.columns = Columns.of(row)
                except Malformed as exc:
                    source.columns = None
                    self.malformed(source, line, str(exc))
                continue
            self.counts.lines += 1
            if source.columns is None:
                self.malformed(source, line, "record before a usable header line")
                continue
            try:
                feedback = to_feedback(source.columns, row, self.suppressing)
            except Malformed as exc:
                self.malformed(source, line, str(exc))
                continue
            if feedback is None:
                self.counts.ignored += 1
                continue
            found.append((feedback, line))
        # The rows the writer commits are built here, in the reader's thread.
        prepared = prepare([feedback for feedback, _ in found])
        return [
            Item(feedback, source.name, line, row)
            for (feedback, line), row in zip(found, prepared, strict=True)
        ]


def _one_row(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return None


def _readiness(fd: int) -> Callable[[], bool]:
    """Whether more of the source can be read at once: a pipe when it holds data, a file
    (or a compressed one, ``fd`` -1) always."""
    if fd < 0 or stat.S_ISREG(os.fstat(fd).st_mode):
        return lambda: True
    return lambda: bool(select.select([fd], [], [], 0)[0])


def _open(name: str) -> tuple[IO[bytes] | gzip.GzipFile | None, int, int]:
    """(file object or None for a descriptor, descriptor, chunk size)."""
    if name == "-":
        return None, 0, PIPE_CHUNK
    if name.endswith(".gz"):
        return gzip.open(name, "rb"), -1, FILE_CHUNK
    fh = open(name, "rb", buffering=0)  # noqa: SIM115 (closed by the reader)
    return fh, fh.fileno(), FILE_CHUNK


def writers(db: Database, bus: LocalBus | None, connections: int) -> list[FeedbackWriter]:
    """The feedback writers of one accounting reader (not started): ``connections`` of them
    on PostgreSQL (``powermta.accounting_connections``), one on SQLite, whose single writer
    would only make them take turns."""
    count = 1 if db.is_sqlite else max(connections, 1)
    return [FeedbackWriter(db, bus, max_batch=COMMIT_BATCH) for _ in range(count)]


@dataclass
class AccountingReader:
    """Reads ``sources`` into ``writer`` (``run``); ``stop`` ends it early (signals).

    ``parallel_writers``: more writers, each with a connection of its own; batches go to
    ``writer`` and to them in turn, so PostgreSQL commits several at once (one connection's
    statements run on one core). Their locks are taken in a fixed order (keys, first events
    and suppressions sorted in the statement), so concurrent batches wait for each other at
    worst, never deadlock; what one of them records the others see as recorded before."""

    writer: FeedbackWriter
    sources: list[str]
    suppressing: Sequence[str]
    parallel_writers: Sequence[FeedbackWriter] = ()
    max_in_flight: int = 4
    summary_interval: float = 300.0
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self.parser = RecordParser(self.counts, self.suppressing)
        self._queue: asyncio.Queue[list[Item] | None] = asyncio.Queue(self.max_in_flight)
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._stop = asyncio.Event()
        self._unmatched_log = _Sampler()
        self._writers = itertools.cycle([self.writer, *self.parallel_writers])

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Counts:
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def hand_over(items: list[Item] | None) -> None:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(items), loop)
            while not self._stop.is_set():
                try:
                    future.result(timeout=1.0)
                    return
                except TimeoutError:
                    continue
            future.cancel()

        reader = threading.Thread(
            target=self._read_all, args=(hand_over,), name="pmta-accounting-reader", daemon=True
        )
        reader.start()
        summary = asyncio.create_task(self._summaries())
        tasks: set[asyncio.Task[None]] = set()
        stopping = asyncio.create_task(self._stop.wait())
        try:
            while True:
                getting = asyncio.create_task(self._queue.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    # Stopped: what was already read is still committed.
                    while not self._queue.empty():
                        queued = self._queue.get_nowait()
                        if queued:
                            tasks.add(asyncio.create_task(self._commit_batch(queued)))
                    break
                batch = getting.result()
                if batch is None:
                    break
                await self._slots.acquire()
                task = asyncio.create_task(self._commit_batch(batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: self._slots.release())
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            stopping.cancel()
            summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await summary
        took = time.monotonic() - started
        log.info(
            "accounting done",
            seconds=round(took, 3),
            records_per_second=round(self.counts.lines / took) if took > 0 else None,
            **self.counts.as_dict(),
        )
        return self.counts

    # -- the reader thread -------------------------------------------------------------------

    def _read_all(self, hand_over: Callable[[list[Item] | None], None]) -> None:
        try:
            for name in self.sources:
                if self._stop.is_set():
                    break
                self._read_one(name, hand_over)
        except Exception:  # a bug must not leave the loop waiting forever
            log.exception("accounting reader failed")
        finally:
            hand_over(None)

    def _read_one(self, name: str, hand_over: Callable[[list[Item] | None], None]) -> None:
        source = _Source("stdin" if name == "-" else name)
        splitter = RecordSplitter()
        try:
            fh, fd, chunk = _open(name)
        except OSError as exc:
            self.counts.unreadable += 1
            log.error("accounting source not readable", source=source.name, error=str(exc))
            return
        ready = _readiness(fd)
        items: list[Item] = []
        try:
            while not self._stop.is_set():
                data = os.read(fd, chunk) if fd >= 0 else fh.read(chunk)  # type: ignore[union-attr]
                if not data:
                    break
                items += self._parse(source, splitter, splitter.feed(data))
                # Records are handed on as soon as nothing more is waiting (a quiet pipe: at
                # once), else in batches: one commit for thousands of records, not hundreds.
                if items and (len(items) >= HAND_OVER or not ready()):
                    hand_over(items)
                    items = []
            items += self._parse(source, splitter, splitter.finish())
            if items:
                hand_over(items)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            self.counts.unreadable += 1
            log.error("accounting source read failed", source=source.name, error=str(exc))
        finally:
            if fh is not None:
                fh.close()

    def _parse(
        self, source: _Source, splitter: RecordSplitter, records: list[tuple[int, str]]
    ) -> list[Item]:
        for line in splitter.dropped:
            self.counts.lines += 1
            self.parser.malformed(source, line, "line too long or unterminated quote")
        splitter.dropped.clear()
        try:
            return self.parser.parse(source, records)
        except Exception:  # a bug: lose these records, not the stream
            log.exception("accounting records skipped", source=source.name, records=len(records))
            self.counts.malformed += len(records)
            return []

    # -- the event loop ----------------------------------------------------------------------

    async def _commit_batch(self, batch: list[Item]) -> None:
        done = await self._commit([i.row for i in batch], next(self._writers))
        for item, recorded in zip(batch, done, strict=True):
            if recorded is True:
                self.counts.recorded += 1
            elif recorded is False:
                self.counts.not_recorded += 1
                if self._unmatched_log.allow():
                    log.info(
                        "accounting record not recorded (unknown message or recipient, "
                        "or recorded before)",
                        source=item.source,
                        line=item.line,
                        type=(item.feedback.data or {}).get("record"),
                        job=item.feedback.message_id[:64],
                    )
            else:
                self.counts.failed += 1
                log.error(
                    "accounting record could not be stored; skipped",
                    source=item.source,
                    line=item.line,
                    job=item.feedback.message_id[:64],
                )

    async def _commit(self, items: list[FeedbackRow], writer: FeedbackWriter) -> list[bool | None]:
        """Per item True/False as FeedbackWriter.record says; None: not storable."""
        failures = 0
        while True:
            try:
                return list(await writer.record_prepared(items))
            except StorageUnavailable as exc:
                failures += 1
                # The database answers, yet this keeps failing: something in it cannot be
                # stored. Halve it until that record is found; the others are committed.
                if failures >= 3 and await self._database_answers():
                    if len(items) == 1:
                        return [None]
                    half = len(items) // 2
                    return await self._commit(items[:half], writer) + await self._commit(
                        items[half:], writer
                    )
                if self._stop.is_set() and failures >= 3:
                    log.error("accounting records not committed at stop", records=len(items))
                    return [None] * len(items)
                delay = self.retry_delays[min(failures, len(self.retry_delays)) - 1]
                log.warning(
                    "accounting commit failed; retrying",
                    records=len(items),
                    retry_in=delay,
                    error=str(exc)[:200],
                )
                await asyncio.sleep(delay)

    async def _database_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.writer.db.ping(), 10)
        except Exception:
            return False
        return True

    async def _summaries(self) -> None:
        last: dict[str, Any] = {}
        while True:
            await asyncio.sleep(self.summary_interval)
            now = self.counts.as_dict()
            if now != last:
                log.info("accounting progress", **now)
                last = now
