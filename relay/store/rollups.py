"""The event rollups on SQLite: counted once per write transaction, not once per event.

What the rollup tables hold (schema.py, docs/events.md "Counting") is the same on both
backends. PostgreSQL keeps them with a statement-level trigger (migration 0003): one set of
aggregated inserts per INSERT statement. SQLite has no statement triggers, and a row trigger
doing five upserts per event cost about 55 us of the writer's time per event, with the write
lock held. So on SQLite a row trigger only notes the new event's id in ``event_unfolded``
(migration 0015), and ``fold_sqlite`` counts every noted event with a few set-based
statements (GROUP BY: one upsert per rollup key instead of one per event) before the same
transaction commits: about 20 us per event. Every writer that goes through
``SqliteRunner.write`` or ``Database.write`` folds before it commits, so a reader never sees
an event that is not counted; the maintenance task folds too (relay/event_maintenance.py), for
a writer that wrote around both (a script with its own connection).

The counting rules are those of the PostgreSQL trigger, row for row: ``uniq`` marks the first
event of its kind per message and recipient (``event_firsts``; events flagged ``data.machine``
never are), events are counted in id order, delivery times come from ``data.seconds`` or the
message's age.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

DAY = 86400
# The kinds of event counted once per recipient (the first event of the kind that is not
# flagged ``data.machine``): event name -> kind. Migration 0003's trigger uses the same table
# (a test checks that they agree).
KINDS = {
    "delivered": "delivered",
    "accepted-by-mta": "delivered",
    "bounced": "bounced",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}
# The recipient-domain statistics' classes, each counted once per recipient with its delivery
# times (schema.RCPT_CLASSES names them in the same order).
CLASSES = {
    "sent": ("delivered", "accepted-by-mta"),
    "failed": ("bounced", "rejected", "failed"),
}
TIMED = tuple(e for names in CLASSES.values() for e in names)
# Delivery-speed histogram bucket bounds (seconds): < 1, 1-5, 5-10, 10-30, 30-60, 1-5m, 5-10m.
BOUNDS = (1, 5, 10, 30, 60, 300, 600)
RD_TIMING = ("timed", "seconds", "min", "max", *(f"h{i}" for i in range(8)))
RD_COLUMNS = ("n", "accepted", *CLASSES, *(f"{k}_{c}" for k in CLASSES for c in RD_TIMING))


def _in(names: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"


_KIND = "CASE e.event " + " ".join(f"WHEN '{e}' THEN '{k}'" for e, k in KINDS.items()) + " END"
_MACHINE = (
    "coalesce(CASE WHEN json_valid(e.data) THEN json_extract(e.data, '$.machine') END, 0) "
    "NOT IN (0, '', 'false', '0')"
)
_CLASS = "CASE " + " ".join(f"WHEN e.event IN {_in(v)} THEN '{k}'" for k, v in CLASSES.items())
_CLASS += " END"
# CROSS JOIN keeps event_unfolded the outer loop: without statistics SQLite's planner would
# otherwise walk all of events in id order and probe the few unfolded ids.
_NOTED = "FROM event_unfolded u CROSS JOIN events e ON e.id = u.id"

PENDING = "SELECT 1 FROM event_unfolded LIMIT 1"

# The first event of each kind per message and recipient, in id order (as the row trigger saw
# them); an earlier transaction's first stays first.
_FIRSTS = f"""
INSERT INTO event_firsts (message_id, recipient, kind, event_id, created_at)
SELECT e.message_id, lower(e.recipient), {_KIND}, e.id, e.created_at
{_NOTED}
WHERE {_KIND} IS NOT NULL AND NOT ({_MACHINE})
  AND e.message_id IS NOT NULL AND e.recipient IS NOT NULL
ORDER BY u.id
ON CONFLICT DO NOTHING
"""
_BATCH_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS fold_batch (
    id INTEGER PRIMARY KEY, created_at REAL NOT NULL, user_id INTEGER NOT NULL,
    domain_id INTEGER NOT NULL, message_id TEXT, rcpt TEXT, event TEXT NOT NULL,
    smtp_code INTEGER NOT NULL, day INTEGER NOT NULL, data TEXT, uniq INTEGER NOT NULL,
    klass TEXT, secs REAL)
"""
_UNIQ = (
    f"CASE WHEN {_KIND} IS NULL THEN 1 WHEN {_MACHINE} THEN 0 "
    "WHEN e.message_id IS NULL OR e.recipient IS NULL THEN 1 "
    "ELSE EXISTS (SELECT 1 FROM event_firsts f WHERE f.message_id = e.message_id "
    f"AND f.recipient = lower(e.recipient) AND f.kind = {_KIND} AND f.event_id = e.id) END"
)
_BATCH = f"""
INSERT INTO temp.fold_batch (id, created_at, user_id, domain_id, message_id, rcpt, event,
    smtp_code, day, data, uniq, klass)
SELECT e.id, e.created_at, e.user_id, e.domain_id, e.message_id, lower(e.recipient), e.event,
    coalesce(e.smtp_code, 0), CAST(e.created_at / {DAY} AS INTEGER), e.data, {_UNIQ}, {_CLASS}
{_NOTED}
"""
# A counted-once sent or failed event's delivery time: data.seconds when it is a number, else
# the message's age.
_SECONDS = f"""
UPDATE temp.fold_batch SET secs =
    CASE WHEN json_valid(data) AND json_type(data, '$.seconds') IN ('integer', 'real')
    THEN json_extract(data, '$.seconds')
    ELSE created_at - (SELECT m.created_at FROM messages m WHERE m.id = fold_batch.message_id)
    END
WHERE uniq AND event IN {_in(TIMED)}
"""
# (An upsert's SELECT needs a WHERE clause, even "true": SQLite's parser otherwise reads ON
# CONFLICT as a join constraint.)
_COUNTS = """
INSERT INTO event_counts (user_id, domain_id, day, event, smtp_code, seq, n, uniq, last_at)
SELECT user_id, domain_id, day, event, smtp_code, 0, count(*), sum(uniq), max(created_at)
FROM temp.fold_batch WHERE true
GROUP BY user_id, domain_id, day, event, smtp_code
ON CONFLICT (user_id, domain_id, day, event, smtp_code, seq) DO UPDATE SET
    n = n + excluded.n, uniq = uniq + excluded.uniq, last_at = max(last_at, excluded.last_at)
"""


def _histogram(secs: str) -> list[str]:
    """The eight bucket conditions over a seconds expression."""
    conds = [f"{secs} < {BOUNDS[0]}"]
    conds += [f"{secs} >= {lo} AND {secs} < {hi}" for lo, hi in itertools.pairwise(BOUNDS)]
    conds.append(f"{secs} >= {BOUNDS[-1]}")
    return conds


def _rd_values() -> str:
    values = ["count(*)", "sum(event = 'accepted')"]
    values += [f"sum(uniq AND klass IS '{k}')" for k in CLASSES]
    for k in CLASSES:
        timed = f"klass IS '{k}' AND secs IS NOT NULL"
        values += [
            f"sum({timed})",
            f"total(CASE WHEN {timed} THEN secs END)",
            f"min(CASE WHEN {timed} THEN secs END)",
            f"max(CASE WHEN {timed} THEN secs END)",
        ]
        values += [f"sum(coalesce(klass IS '{k}' AND {c}, 0))" for c in _histogram("secs")]
    return ",\n    ".join(values)


def _rd_update() -> str:
    """Add the new counts; min and max of the seconds, NULL meaning none."""
    sets = []
    for col in RD_COLUMNS:
        if col.endswith(("_min", "_max")):
            pick = "min" if col.endswith("_min") else "max"
            sets.append(
                f"{col} = CASE WHEN {col} IS NULL THEN excluded.{col} "
                f"WHEN excluded.{col} IS NULL THEN {col} ELSE {pick}({col}, excluded.{col}) END"
            )
        else:
            sets.append(f"{col} = {col} + excluded.{col}")
    return ",\n    ".join(sets)


_RCPT_DOMAIN = "substr(rcpt, instr(rcpt, '@') + 1)"
_RCPT_DOMAINS = f"""
INSERT INTO event_rcpt_domains (domain_id, day, rcpt_domain, seq, {", ".join(RD_COLUMNS)})
SELECT domain_id, day, {_RCPT_DOMAIN}, 0,
    {_rd_values()}
FROM temp.fold_batch WHERE rcpt IS NOT NULL
GROUP BY domain_id, day, {_RCPT_DOMAIN}
ON CONFLICT (domain_id, day, rcpt_domain, seq) DO UPDATE SET
    {_rd_update()}
"""
# A message's tags come with its 'accepted' event; its later events are counted under them.
_MESSAGE_TAGS = """
INSERT INTO event_message_tags (message_id, tags, created_at)
SELECT message_id, json_extract(data, '$.tags'), created_at FROM temp.fold_batch
WHERE event = 'accepted' AND message_id IS NOT NULL AND json_valid(data)
  AND json_type(data, '$.tags') = 'array' AND json_array_length(data, '$.tags') > 0
ORDER BY id
ON CONFLICT DO NOTHING
"""
_TAGS = """
INSERT INTO event_tags (domain_id, day, tag, event, seq, n, uniq)
SELECT domain_id, day, tag, event, 0, count(*), sum(uniq) FROM (
    SELECT DISTINCT b.id, b.domain_id, b.day, substr(j.value, 1, 255) AS tag, b.event, b.uniq
    FROM temp.fold_batch b
    JOIN event_message_tags mt ON mt.message_id = b.message_id, json_each(mt.tags) j
) WHERE true
GROUP BY domain_id, day, tag, event
ON CONFLICT (domain_id, day, tag, event, seq) DO UPDATE SET
    n = n + excluded.n, uniq = uniq + excluded.uniq
"""

FOLD: tuple[str, ...] = (
    _FIRSTS,
    _BATCH_TABLE,
    "DELETE FROM temp.fold_batch",
    _BATCH,
    _SECONDS,
    _COUNTS,
    _RCPT_DOMAINS,
    _MESSAGE_TAGS,
    _TAGS,
    "DELETE FROM temp.fold_batch",
    "DELETE FROM event_unfolded",
)


def _before_0015(exc: Exception) -> bool:
    """A schema from before migration 0015 (the relay migrating, a test downgrading): its
    row trigger still counts every event itself."""
    return "no such table: event_unfolded" in str(exc)


def fold_sqlite(conn: sqlite3.Connection) -> bool:
    """Count the events noted since the last fold, in the caller's write transaction. Returns
    whether there were any."""
    try:
        if conn.execute(PENDING).fetchone() is None:
            return False
    except sqlite3.OperationalError as exc:
        if _before_0015(exc):
            return False
        raise
    for statement in FOLD:
        conn.execute(statement)
    return True


async def fold_sqlite_async(conn: AsyncConnection) -> bool:
    """``fold_sqlite`` on a SQLAlchemy connection in a write transaction."""
    try:
        if (await conn.exec_driver_sql(PENDING)).first() is None:
            return False
    except DBAPIError as exc:
        if _before_0015(exc):
            return False
        raise
    for statement in FOLD:
        await conn.exec_driver_sql(statement)
    return True
