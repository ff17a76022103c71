"""The event log's storage upkeep: daily partitions (PostgreSQL), folding the rollups' per-
statement rows, and retention. The SQL of each step is here, per backend, named.

PostgreSQL partitions ``events`` by range of ``created_at``: one partition per UTC day
(``event_partitions.events_YYYYMMDD``) and a DEFAULT partition for rows outside every day that
has one (so an insert never fails for want of a partition). A new day is created as a plain
table and then attached (``ATTACH PARTITION`` takes only a SHARE UPDATE EXCLUSIVE lock on
``events``: writers go on), after moving into it any rows of that day the DEFAULT partition
caught. An old day is dropped whole. Dropping (like attaching, for the DEFAULT partition) needs
a moment's exclusive lock: every DDL here runs with a short ``lock_timeout`` and is simply
retried at the next run if it could not get it, so writers never wait longer than that.

SQLite has no partitions: old events are deleted in small batches, each its own short write
transaction, so the queue's writers get the lock between batches.

The rollup tables (schema.py) are kept by a trigger on ``events`` (migration 0003) on
PostgreSQL, and on SQLite by each writer before it commits (relay/store/rollups.py). On
PostgreSQL every INSERT statement adds rows of its own (``seq`` > 0) instead of updating shared
ones, so concurrent writers never queue on a hot counter row; ``fold_rollups`` merges them into
one row per key (``seq`` 0). Readers sum over the key, folded or not.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import rollups
from relay.store.db import Database
from relay.store.rollups import DAY as DAY  # re-exported: the queries use them
from relay.store.rollups import KINDS as KINDS

PARTITION_SCHEMA = "event_partitions"
DEFAULT_PARTITION = "events_default"
LOCK_TIMEOUT = "500ms"


def day_of(ts: float) -> int:
    """The UTC day number of a Unix time (the rollups' ``day``)."""
    return int(ts // DAY)


def partition_name(day: int) -> str:
    return "events_" + dt.datetime.fromtimestamp(day * DAY, dt.UTC).strftime("%Y%m%d")


# -- PostgreSQL partitions --------------------------------------------------------------------

PG_PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass
"""
PG_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
# Only one node does partition work at a time (the others skip that run).
PG_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('relay.events.partitions'))"
PG_NEW_TABLE = "CREATE TABLE {schema}.{name} (LIKE events INCLUDING DEFAULTS)"
# The Query filter's trigram index of an event's own text (when pg_trgm is installed; the
# expression is the one the search query uses, migration 0003).
EVENT_SEARCH = "lower(coalesce(recipient, '') || chr(1) || coalesce(smtp_response, ''))"
PG_HAS_TRIGRAMS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')"
PG_SEARCH_INDEX = "CREATE INDEX {name}_search ON {schema}.{name} USING gin (({expr}) gin_trgm_ops)"
PG_MOVE_FROM_DEFAULT = """
WITH moved AS (
    DELETE FROM {schema}.{default} WHERE created_at >= {low} AND created_at < {high}
    RETURNING *
)
INSERT INTO {schema}.{name} SELECT * FROM moved
"""
PG_ATTACH = (
    "ALTER TABLE events ATTACH PARTITION {schema}.{name} FOR VALUES FROM ({low}) TO ({high})"
)
PG_DROP = "DROP TABLE {schema}.{name}"
PG_DELETE_BATCH = """
DELETE FROM {schema}.{name} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {schema}.{name} WHERE created_at < $1 LIMIT $2))
"""

_BOUND = re.compile(r"FROM \((?P<low>[^)]*)\) TO \((?P<high>[^)]*)\)")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    low: float | None  # None: MINVALUE (or the DEFAULT partition)
    high: float | None  # None: MAXVALUE (or the DEFAULT partition)
    default: bool = False


def _bound(text: str) -> float | None:
    text = text.strip().strip("'")
    return None if text in ("MINVALUE", "MAXVALUE") else float(text)


def parse_partition(name: str, bound: str) -> Partition:
    if bound.strip().upper() == "DEFAULT":
        return Partition(name, None, None, default=True)
    found = _BOUND.search(bound)
    if found is None:
        raise ValueError(f"unexpected partition bound of {name}: {bound}")
    return Partition(name, _bound(found["low"]), _bound(found["high"]))


async def pg_partitions(conn: AsyncConnection) -> list[Partition]:
    rows: list[Any] = list((await conn.exec_driver_sql(PG_PARTITIONS)).all())
    return sorted(
        (parse_partition(str(r[0]), str(r[1])) for r in rows),
        key=lambda p: (p.default, p.low if p.low is not None else float("-inf")),
    )


def _covered(parts: list[Partition], low: float, high: float) -> bool | None:
    """True: a range partition holds all of [low, high); None: one overlaps it partly (the day
    cannot get its own partition); False: none overlaps it."""
    for p in parts:
        if p.default:
            continue
        p_low = float("-inf") if p.low is None else p.low
        p_high = float("inf") if p.high is None else p.high
        if p_low <= low and high <= p_high:
            return True
        if p_low < high and low < p_high:
            return None
    return False


async def ensure_partitions(db: Database, first_day: int, last_day: int) -> list[str]:
    """Daily partitions for ``first_day`` .. ``last_day`` (inclusive) where missing; returns
    the names made. No-op on SQLite."""
    if db.is_sqlite:
        return []
    made: list[str] = []
    for day in range(first_day, last_day + 1):
        low, high = day * DAY, (day + 1) * DAY
        async with db.write() as conn:
            if not await conn.scalar(text(PG_TRY_LOCK)):
                return made
            if _covered(await pg_partitions(conn), low, high) is not False:
                continue
            await conn.exec_driver_sql(PG_LOCK_TIMEOUT)
            fmt = {
                "schema": PARTITION_SCHEMA,
                "name": partition_name(day),
                "default": DEFAULT_PARTITION,
                "low": low,
                "high": high,
            }
            await conn.exec_driver_sql(PG_NEW_TABLE.format(**fmt))
            if await conn.scalar(text(PG_HAS_TRIGRAMS)):
                await conn.exec_driver_sql(PG_SEARCH_INDEX.format(expr=EVENT_SEARCH, **fmt))
            await conn.exec_driver_sql(PG_MOVE_FROM_DEFAULT.format(**fmt))
            await conn.exec_driver_sql(PG_ATTACH.format(**fmt))
        made.append(str(fmt["name"]))
    return made


async def drop_partitions_before(db: Database, cutoff: float) -> list[str]:
    """Drop every range partition that holds nothing at or after ``cutoff``."""
    if db.is_sqlite:
        return []
    dropped: list[str] = []
    async with db.read() as conn:
        parts = await pg_partitions(conn)
    for p in parts:
        if p.default or p.high is None or p.high > cutoff:
            continue
        async with db.write() as conn:
            if not await conn.scalar(text(PG_TRY_LOCK)):
                return dropped
            await conn.exec_driver_sql(PG_LOCK_TIMEOUT)
            await conn.exec_driver_sql(PG_DROP.format(schema=PARTITION_SCHEMA, name=p.name))
        dropped.append(p.name)
    return dropped


# -- Retention of rows -----------------------------------------------------------------------

SQLITE_OLD_EVENT_IDS = "SELECT id FROM events WHERE created_at < ? ORDER BY id LIMIT ?"
SQLITE_DELETE_EVENTS = "DELETE FROM events WHERE id IN ({marks})"
SQLITE_DELETE_BATCH = """
DELETE FROM {name} WHERE rowid IN (SELECT rowid FROM {name} WHERE created_at < ? LIMIT ?)
"""
PG_TABLE_DELETE_BATCH = """
DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE created_at < $1 LIMIT $2))
"""
# Per-day rollups: a day's rows are few, one statement per table.
ROLLUP_TABLES = ("event_counts", "event_rcpt_domains", "event_tags")
DELETE_ROLLUP_DAYS = "DELETE FROM {name} WHERE day < {day}"
# Bookkeeping kept by created_at, deleted in batches like the events.
DATED_TABLES = ("event_firsts", "event_message_tags")
PG_DATED_TABLES = (*DATED_TABLES, f"{PARTITION_SCHEMA}.message_search")


async def delete_events_before(db: Database, cutoff: float, batch: int = 5000) -> int:
    """Delete, one batch per write transaction, the events older than ``cutoff`` that are not
    in a partition of their own (on PostgreSQL: the DEFAULT partition and a partition that
    straddles the cutoff; on SQLite: the table). Returns how many."""
    total = 0
    if db.is_sqlite:
        while True:
            async with db.read() as conn:
                ids = [
                    r[0]
                    for r in (
                        await conn.exec_driver_sql(SQLITE_OLD_EVENT_IDS, (cutoff, batch))
                    ).all()
                ]
            if not ids:
                return total
            async with db.write() as conn:
                marks = ",".join("?" * len(ids))
                await conn.exec_driver_sql(SQLITE_DELETE_EVENTS.format(marks=marks), tuple(ids))
            total += len(ids)
    async with db.read() as conn:
        parts = await pg_partitions(conn)
    for p in parts:
        if not (p.default or p.low is None or p.low < cutoff):
            continue
        if p.high is not None and p.high <= cutoff:
            continue  # dropped whole by drop_partitions_before
        sql = PG_DELETE_BATCH.format(schema=PARTITION_SCHEMA, name=p.name)
        while True:
            async with db.write() as conn:
                n = (await conn.exec_driver_sql(sql, (cutoff, batch))).rowcount
            total += n
            if n < batch:
                break
    return total


async def delete_bookkeeping_before(db: Database, cutoff: float, batch: int = 5000) -> int:
    """Rollup days before ``cutoff``'s day, and the unique-count bookkeeping older than it."""
    total = 0
    async with db.write() as conn:
        for name in ROLLUP_TABLES:
            await conn.exec_driver_sql(DELETE_ROLLUP_DAYS.format(name=name, day=day_of(cutoff)))
    sql = SQLITE_DELETE_BATCH if db.is_sqlite else PG_TABLE_DELETE_BATCH
    for name in DATED_TABLES if db.is_sqlite else PG_DATED_TABLES:
        while True:
            async with db.write() as conn:
                n = (await conn.exec_driver_sql(sql.format(name=name), (cutoff, batch))).rowcount
            total += n
            if n < batch:
                break
    return total


# -- Folding the rollups (PostgreSQL) ---------------------------------------------------------


def _fold_sql(
    table: str,
    key: tuple[str, ...],
    sums: tuple[str, ...],
    mins: tuple[str, ...] = (),
    maxes: tuple[str, ...] = (),
) -> str:
    cols = ", ".join(key)
    match = " AND ".join(f"c.{k} = k.{k}" for k in key)
    values = [f"sum({c})" for c in sums] + [f"min({c})" for c in mins]
    values += [f"max({c})" for c in maxes]
    updates = [f"{c} = {table}.{c} + excluded.{c}" for c in sums]
    updates += [f"{c} = least({table}.{c}, excluded.{c})" for c in mins]
    updates += [f"{c} = greatest({table}.{c}, excluded.{c})" for c in maxes]
    value_cols = ", ".join((*sums, *mins, *maxes))
    return f"""
WITH k AS (
    SELECT DISTINCT {cols} FROM {table} WHERE seq <> 0
), d AS (
    DELETE FROM {table} c USING k WHERE {match} RETURNING c.*
)
INSERT INTO {table} ({cols}, seq, {value_cols})
SELECT {cols}, 0, {", ".join(values)} FROM d GROUP BY {cols}
ON CONFLICT ({cols}, seq) DO UPDATE SET {", ".join(updates)}
"""


PG_FOLD = (
    _fold_sql(
        "event_counts",
        ("user_id", "domain_id", "day", "event", "smtp_code"),
        ("n", "uniq"),
        maxes=("last_at",),
    ),
    _fold_sql(
        "event_rcpt_domains",
        ("domain_id", "day", "rcpt_domain"),
        (
            "n",
            "accepted",
            "sent",
            "failed",
            *(f"{k}_{c}" for k in ("sent", "failed") for c in ("timed", "seconds")),
            *(f"{k}_h{i}" for k in ("sent", "failed") for i in range(8)),
        ),
        mins=("sent_min", "failed_min"),
        maxes=("sent_max", "failed_max"),
    ),
    _fold_sql("event_tags", ("domain_id", "day", "tag", "event"), ("n", "uniq")),
)


async def fold_rollups(db: Database) -> int:
    """Merge the per-statement rollup rows into one row per key; returns the rows written.
    On SQLite (one row per key already) count any events a writer left uncounted (every
    writer of the relay counts its own before it commits: relay/store/rollups.py)."""
    if db.is_sqlite:
        async with db.write() as conn:
            return int(await rollups.fold_sqlite_async(conn))
    written = 0
    for sql in PG_FOLD:
        async with db.write() as conn:
            written += (await conn.exec_driver_sql(sql)).rowcount
    return written
