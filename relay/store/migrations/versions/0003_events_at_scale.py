"""events at scale: daily partitions (PostgreSQL), rollups kept by triggers, indexes

Revision ID: 0003
Revises: 0001

- PostgreSQL: ``events`` becomes a table partitioned by range of ``created_at`` (one partition
  per UTC day in the ``event_partitions`` schema, and a DEFAULT partition for anything outside
  them); primary key (created_at, id). Existing rows are copied over.
- Rollup tables (event_counts, event_rcpt_domains, event_tags) and the unique-count bookkeeping
  (event_firsts, event_message_tags), maintained by a trigger on ``events`` in the same
  transaction as every insert: on PostgreSQL one statement-level AFTER INSERT trigger with a
  transition table (one aggregated insert per rollup per statement, whoever the writer), on
  SQLite a row trigger (an upsert per rollup). Existing events are counted too.
- Indexes for the event queries, and messages by Message-ID header.

docs/events.md ("Storage", "Counting") describes what the triggers count.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY = 86400
PARTITION_SCHEMA = "event_partitions"
# Partitions made right away around the migration's day; the relay's maintenance task keeps
# making them ahead of time (relay/store/eventlog.py).
DAYS_BEFORE, DAYS_AHEAD = 1, 7

# Kinds counted once per recipient (the first non-machine event of the kind): event -> kind.
KINDS = {
    "delivered": "delivered",
    "accepted-by-mta": "delivered",
    "bounced": "bounced",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}
# Events whose delivery time is recorded (recipient-domain statistics).
TIMED = ("delivered", "accepted-by-mta", "bounced", "rejected", "failed")
# Delivery-speed histogram bucket bounds (seconds): < 1, 1-5, 5-10, 10-30, 30-60, 1-5m, 5-10m.
BOUNDS = (1, 5, 10, 30, 60, 300, 600)
# A JSON number PostgreSQL's float8 takes without overflow.
PG_NUMBER = r"^-?[0-9]{1,15}(\.[0-9]+)?([eE][-+]?[0-9]{1,2})?$"


def _kind_case(column: str) -> str:
    whens = " ".join(f"WHEN '{event}' THEN '{kind}'" for event, kind in KINDS.items())
    return f"CASE {column} {whens} END"


def _in(names: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"


def _histogram(secs: str) -> list[str]:
    """The eight bucket conditions over a seconds expression."""
    conds = [f"{secs} < {BOUNDS[0]}"]
    conds += [f"{secs} >= {lo} AND {secs} < {hi}" for lo, hi in itertools.pairwise(BOUNDS)]
    conds.append(f"{secs} >= {BOUNDS[-1]}")
    return conds


# -- PostgreSQL -------------------------------------------------------------------------------

PG_EVENTS = f"""
CREATE TABLE events (
    id bigint NOT NULL DEFAULT nextval('events_id_seq'),
    created_at double precision NOT NULL,
    user_id integer NOT NULL,
    domain_id integer NOT NULL,
    message_id varchar(36),
    recipient varchar(320),
    event varchar(32) NOT NULL,
    smtp_code integer,
    smtp_response text,
    data json,
    CONSTRAINT pk_events PRIMARY KEY (created_at, id)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE events_id_seq OWNED BY events.id;
CREATE INDEX ix_events_user_created ON events (user_id, created_at);
CREATE INDEX ix_events_user_event_created ON events (user_id, event, created_at);
CREATE INDEX ix_events_domain_created ON events (domain_id, created_at);
CREATE INDEX ix_events_domain_event_created ON events (domain_id, event, created_at);
CREATE INDEX ix_events_message ON events (message_id);
CREATE SCHEMA IF NOT EXISTS {PARTITION_SCHEMA};
CREATE TABLE {PARTITION_SCHEMA}.events_default PARTITION OF events DEFAULT;
CREATE SEQUENCE event_rollup_seq;
"""

_PG_SECONDS = (
    f"CASE WHEN json_typeof(u.data->'seconds') = 'number' "
    f"AND (u.data->>'seconds') ~ '{PG_NUMBER}' THEN (u.data->>'seconds')::float8 "
    "ELSE u.created_at - (SELECT m.created_at FROM messages m WHERE m.id = u.message_id) END"
)
_PG_HIST = ",\n            ".join(f"count(*) FILTER (WHERE {c})" for c in _histogram("secs"))

# One statement per INSERT statement on events, whoever wrote it. Every sub-statement below is
# a data-modifying CTE of one query: one pass over the transition table.
PG_ROLLUP_FUNCTION = f"""
CREATE OR REPLACE FUNCTION events_rollup() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    s bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_events) THEN
        RETURN NULL;
    END IF;
    -- Each statement writes rollup rows of its own (seq), so concurrent writers never wait
    -- on each other's rows; the maintenance task folds them (relay/store/eventlog.py).
    s := nextval('event_rollup_seq');
    WITH n AS (
        SELECT e.id, e.created_at, e.user_id, e.domain_id, e.message_id, e.event, e.data,
            coalesce(e.smtp_code, 0) AS smtp_code,
            lower(e.recipient) AS rcpt,
            floor(e.created_at / {DAY})::int AS day,
            {_kind_case("e.event")} AS kind,
            coalesce(e.data->>'machine', 'false') NOT IN ('false', '0', '') AS machine
        FROM new_events e
    ), f AS (
        INSERT INTO event_firsts (message_id, recipient, kind, event_id, created_at)
        SELECT DISTINCT ON (message_id, rcpt, kind) message_id, rcpt, kind, id, created_at
        FROM n
        WHERE kind IS NOT NULL AND NOT machine AND message_id IS NOT NULL AND rcpt IS NOT NULL
        ORDER BY message_id, rcpt, kind, created_at, id
        ON CONFLICT DO NOTHING
        RETURNING event_id
    ), u AS (
        SELECT n.*,
            CASE WHEN n.kind IS NULL THEN true
                 WHEN n.machine THEN false
                 WHEN n.message_id IS NULL OR n.rcpt IS NULL THEN true
                 ELSE n.id IN (SELECT event_id FROM f) END AS uniq
        FROM n
    ), w AS (
        SELECT u.*,
            CASE WHEN u.uniq AND u.event IN {_in(TIMED)} THEN {_PG_SECONDS} END AS secs
        FROM u
    ), c AS (
        INSERT INTO event_counts (user_id, domain_id, day, event, smtp_code, seq, n, uniq,
            last_at)
        SELECT user_id, domain_id, day, event, smtp_code, s, count(*),
            count(*) FILTER (WHERE uniq), max(created_at)
        FROM u GROUP BY user_id, domain_id, day, event, smtp_code
    ), r AS (
        INSERT INTO event_rcpt_domains (domain_id, day, rcpt_domain, event, seq, n, uniq, timed,
            sum_seconds, min_seconds, max_seconds, h0, h1, h2, h3, h4, h5, h6, h7)
        SELECT domain_id, day, substr(rcpt, strpos(rcpt, '@') + 1), event, s, count(*),
            count(*) FILTER (WHERE uniq), count(secs), coalesce(sum(secs), 0), min(secs),
            max(secs),
            {_PG_HIST}
        FROM w WHERE rcpt IS NOT NULL
        GROUP BY domain_id, day, substr(rcpt, strpos(rcpt, '@') + 1), event
    ), tg AS (
        SELECT DISTINCT ON (message_id) message_id, data->'tags' AS tags, created_at
        FROM n
        WHERE event = 'accepted' AND message_id IS NOT NULL
          AND json_typeof(data->'tags') = 'array' AND json_array_length(data->'tags') > 0
        ORDER BY message_id, id
    ), ti AS (
        INSERT INTO event_message_tags (message_id, tags, created_at)
        SELECT message_id, tags, created_at FROM tg
        ON CONFLICT DO NOTHING
    ), mt AS (
        SELECT message_id, tags FROM tg
        UNION ALL
        SELECT x.message_id, x.tags FROM event_message_tags x
        WHERE x.message_id IN (SELECT message_id FROM n WHERE message_id IS NOT NULL)
          AND x.message_id NOT IN (SELECT message_id FROM tg)
    )
    INSERT INTO event_tags (domain_id, day, tag, event, seq, n, uniq)
    SELECT u.domain_id, u.day, t.tag, u.event, s, count(*), count(*) FILTER (WHERE u.uniq)
    FROM u JOIN mt ON mt.message_id = u.message_id
    CROSS JOIN LATERAL (
        SELECT DISTINCT left(v, 255) AS tag FROM json_array_elements_text(mt.tags) v
    ) t
    GROUP BY u.domain_id, u.day, t.tag, u.event;
    RETURN NULL;
END
$fn$;
"""

PG_ROLLUP_TRIGGER = """
CREATE TRIGGER events_rollup AFTER INSERT ON events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION events_rollup();
"""

PG_COLUMNS = (
    "id, created_at, user_id, domain_id, message_id, recipient, event, smtp_code, "
    "smtp_response, data"
)


def _pg_upgrade() -> None:
    bind = op.get_bind()
    # The old table keeps its sequence: the new one continues its ids.
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY NONE")
    op.execute("ALTER TABLE events RENAME TO events_0001")
    op.execute("ALTER TABLE events_0001 RENAME CONSTRAINT pk_events TO pk_events_0001")
    for name in ("ix_events_user_created", "ix_events_domain_created", "ix_events_message"):
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_0001")
    for statement in PG_EVENTS.split(";\n"):
        if statement.strip():
            op.execute(statement)
    today = int(time.time() // DAY)
    oldest = bind.exec_driver_sql("SELECT min(created_at) FROM events_0001").scalar()
    first = today - DAYS_BEFORE
    if oldest is not None and oldest < first * DAY:
        # Rows older than the daily partitions: one partition for all of them, dropped by
        # retention once everything in it is too old.
        op.execute(
            f"CREATE TABLE {PARTITION_SCHEMA}.events_before_{first} PARTITION OF events "
            f"FOR VALUES FROM (MINVALUE) TO ({first * DAY})"
        )
    for day in range(first, today + DAYS_AHEAD + 1):
        name = time.strftime("%Y%m%d", time.gmtime(day * DAY))
        op.execute(
            f"CREATE TABLE {PARTITION_SCHEMA}.events_{name} PARTITION OF events "
            f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})"
        )
    _rollup_tables()
    op.execute(PG_ROLLUP_FUNCTION)
    op.execute(PG_ROLLUP_TRIGGER)
    # Through the trigger: existing events are counted exactly as new ones are.
    op.execute(
        f"INSERT INTO events ({PG_COLUMNS}) SELECT {PG_COLUMNS} FROM events_0001 ORDER BY id"
    )
    op.execute("DROP TABLE events_0001")


# -- SQLite -----------------------------------------------------------------------------------

_SQ_KIND = _kind_case("NEW.event")
_SQ_MACHINE = (
    "coalesce(CASE WHEN json_valid(NEW.data) THEN json_extract(NEW.data, '$.machine') END, 0) "
    "NOT IN (0, '', 'false', '0')"
)
_SQ_UNIQ = (
    f"CASE WHEN {_SQ_KIND} IS NULL THEN 1 WHEN {_SQ_MACHINE} THEN 0 "
    "WHEN NEW.message_id IS NULL OR NEW.recipient IS NULL THEN 1 "
    "ELSE EXISTS (SELECT 1 FROM event_firsts f WHERE f.message_id = NEW.message_id "
    f"AND f.recipient = lower(NEW.recipient) AND f.kind = {_SQ_KIND} AND f.event_id = NEW.id) END"
)
_SQ_SECONDS = (
    f"CASE WHEN ({_SQ_UNIQ}) AND NEW.event IN {_in(TIMED)} THEN "
    "CASE WHEN json_valid(NEW.data) AND json_type(NEW.data, '$.seconds') IN ('integer', 'real') "
    "THEN json_extract(NEW.data, '$.seconds') "
    "ELSE NEW.created_at - (SELECT m.created_at FROM messages m WHERE m.id = NEW.message_id) END "
    "END"
)
_SQ_DAY = f"CAST(NEW.created_at / {DAY} AS INTEGER)"
_SQ_HIST_COLS = ", ".join(f"h{i}" for i in range(8))
_SQ_HIST_VALUES = ", ".join(f"coalesce({c}, 0)" for c in _histogram("v.secs"))
_SQ_HIST_ADD = ", ".join(f"h{i} = h{i} + excluded.h{i}" for i in range(8))

SQLITE_ROLLUP_TRIGGER = f"""
CREATE TRIGGER events_rollup AFTER INSERT ON events
BEGIN
    INSERT INTO event_firsts (message_id, recipient, kind, event_id, created_at)
    SELECT NEW.message_id, lower(NEW.recipient), {_SQ_KIND}, NEW.id, NEW.created_at
    WHERE {_SQ_KIND} IS NOT NULL AND NOT ({_SQ_MACHINE})
      AND NEW.message_id IS NOT NULL AND NEW.recipient IS NOT NULL
    ON CONFLICT DO NOTHING;

    INSERT INTO event_counts (user_id, domain_id, day, event, smtp_code, seq, n, uniq, last_at)
    SELECT NEW.user_id, NEW.domain_id, {_SQ_DAY}, NEW.event, coalesce(NEW.smtp_code, 0), 0, 1,
        {_SQ_UNIQ}, NEW.created_at
    WHERE true
    ON CONFLICT (user_id, domain_id, day, event, smtp_code, seq) DO UPDATE SET
        n = n + 1, uniq = uniq + excluded.uniq, last_at = max(last_at, excluded.last_at);

    INSERT INTO event_rcpt_domains (domain_id, day, rcpt_domain, event, seq, n, uniq, timed,
        sum_seconds, min_seconds, max_seconds, {_SQ_HIST_COLS})
    SELECT NEW.domain_id, {_SQ_DAY},
        lower(substr(NEW.recipient, instr(NEW.recipient, '@') + 1)), NEW.event, 0, 1,
        v.uniq, v.secs IS NOT NULL, coalesce(v.secs, 0), v.secs, v.secs, {_SQ_HIST_VALUES}
    FROM (SELECT {_SQ_UNIQ} AS uniq, {_SQ_SECONDS} AS secs) v
    WHERE NEW.recipient IS NOT NULL
    ON CONFLICT (domain_id, day, rcpt_domain, event, seq) DO UPDATE SET
        n = n + 1, uniq = uniq + excluded.uniq, timed = timed + excluded.timed,
        sum_seconds = sum_seconds + excluded.sum_seconds,
        min_seconds = CASE WHEN min_seconds IS NULL THEN excluded.min_seconds
            WHEN excluded.min_seconds IS NULL THEN min_seconds
            ELSE min(min_seconds, excluded.min_seconds) END,
        max_seconds = CASE WHEN max_seconds IS NULL THEN excluded.max_seconds
            WHEN excluded.max_seconds IS NULL THEN max_seconds
            ELSE max(max_seconds, excluded.max_seconds) END,
        {_SQ_HIST_ADD};

    INSERT INTO event_message_tags (message_id, tags, created_at)
    SELECT NEW.message_id, json_extract(NEW.data, '$.tags'), NEW.created_at
    WHERE NEW.event = 'accepted' AND NEW.message_id IS NOT NULL AND json_valid(NEW.data)
      AND json_type(NEW.data, '$.tags') = 'array' AND json_array_length(NEW.data, '$.tags') > 0
    ON CONFLICT DO NOTHING;

    INSERT INTO event_tags (domain_id, day, tag, event, seq, n, uniq)
    SELECT DISTINCT NEW.domain_id, {_SQ_DAY}, substr(j.value, 1, 255), NEW.event, 0, 1,
        {_SQ_UNIQ}
    FROM event_message_tags mt, json_each(mt.tags) j
    WHERE mt.message_id = NEW.message_id
    ON CONFLICT (domain_id, day, tag, event, seq) DO UPDATE SET
        n = n + 1, uniq = uniq + excluded.uniq;
END
"""

SQLITE_COLUMNS = PG_COLUMNS


def _sqlite_upgrade() -> None:
    op.create_index("ix_events_user_event_created", "events", ["user_id", "event", "created_at"])
    op.create_index(
        "ix_events_domain_event_created", "events", ["domain_id", "event", "created_at"]
    )
    _rollup_tables()
    op.execute(SQLITE_ROLLUP_TRIGGER)
    # Through the trigger: existing events are counted exactly as new ones are.
    op.execute(f"CREATE TEMP TABLE events_0001 AS SELECT {SQLITE_COLUMNS} FROM events")
    op.execute("DELETE FROM events")
    op.execute(
        f"INSERT INTO events ({SQLITE_COLUMNS}) SELECT {SQLITE_COLUMNS} FROM events_0001 "
        "ORDER BY id"
    )
    op.execute("DROP TABLE events_0001")


# -- Both -------------------------------------------------------------------------------------


def _rollup_tables() -> None:
    unfolded: dict[str, Any] = {
        "sqlite_where": sa.text("seq <> 0"),
        "postgresql_where": sa.text("seq <> 0"),
    }
    op.create_table(
        "event_counts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("uniq", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
    )
    op.create_index(
        "uq_event_counts_key",
        "event_counts",
        ["user_id", "domain_id", "day", "event", "smtp_code", "seq"],
        unique=True,
    )
    op.create_index("ix_event_counts_unfolded", "event_counts", ["seq"], **unfolded)
    op.create_table(
        "event_rcpt_domains",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("rcpt_domain", sa.String(length=320), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("uniq", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.Column("sum_seconds", sa.Float(), nullable=False),
        sa.Column("min_seconds", sa.Float(), nullable=True),
        sa.Column("max_seconds", sa.Float(), nullable=True),
        *(sa.Column(f"h{i}", sa.BigInteger(), nullable=False) for i in range(8)),
    )
    op.create_index(
        "uq_event_rcpt_domains_key",
        "event_rcpt_domains",
        ["domain_id", "day", "rcpt_domain", "event", "seq"],
        unique=True,
    )
    op.create_index(
        "ix_event_rcpt_domains_rcpt", "event_rcpt_domains", ["domain_id", "rcpt_domain", "day"]
    )
    op.create_index("ix_event_rcpt_domains_unfolded", "event_rcpt_domains", ["seq"], **unfolded)
    op.create_table(
        "event_tags",
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("uniq", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "uq_event_tags_key",
        "event_tags",
        ["domain_id", "day", "tag", "event", "seq"],
        unique=True,
    )
    op.create_index("ix_event_tags_unfolded", "event_tags", ["seq"], **unfolded)
    op.create_table(
        "event_message_tags",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_event_message_tags")),
    )
    op.create_index(
        "ix_event_message_tags_created_at", "event_message_tags", ["created_at"], unique=False
    )
    op.create_table(
        "event_firsts",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "recipient", "kind", name=op.f("pk_event_firsts")),
    )
    op.create_index("ix_event_firsts_created_at", "event_firsts", ["created_at"], unique=False)
    op.create_index(
        "ix_messages_message_id_header", "messages", ["message_id_header"], unique=False
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    bind = op.get_bind()
    op.execute(
        "DROP TRIGGER IF EXISTS events_rollup"
        + ("" if bind.dialect.name == "sqlite" else " ON events")
    )
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS events_rollup()")
        op.execute("ALTER SEQUENCE events_id_seq OWNED BY NONE")
        op.execute("ALTER TABLE events RENAME TO events_0003")
        op.execute("ALTER TABLE events_0003 RENAME CONSTRAINT pk_events TO pk_events_0003")
        for name in (
            "ix_events_user_created",
            "ix_events_user_event_created",
            "ix_events_domain_created",
            "ix_events_domain_event_created",
            "ix_events_message",
        ):
            op.execute(f"ALTER INDEX {name} RENAME TO {name}_0003")
        op.execute(
            "CREATE TABLE events (id bigint NOT NULL DEFAULT nextval('events_id_seq'), "
            "created_at double precision NOT NULL, user_id integer NOT NULL, "
            "domain_id integer NOT NULL, message_id varchar(36), recipient varchar(320), "
            "event varchar(32) NOT NULL, smtp_code integer, smtp_response text, data json, "
            "CONSTRAINT pk_events PRIMARY KEY (id))"
        )
        op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
        op.execute(f"INSERT INTO events ({PG_COLUMNS}) SELECT {PG_COLUMNS} FROM events_0003")
        op.execute("DROP TABLE events_0003 CASCADE")
        op.execute(f"DROP SCHEMA IF EXISTS {PARTITION_SCHEMA} CASCADE")
        op.execute("DROP SEQUENCE IF EXISTS event_rollup_seq")
        op.create_index("ix_events_user_created", "events", ["user_id", "created_at"])
        op.create_index("ix_events_domain_created", "events", ["domain_id", "created_at"])
        op.create_index("ix_events_message", "events", ["message_id"])
    else:
        op.drop_index("ix_events_user_event_created", "events")
        op.drop_index("ix_events_domain_event_created", "events")
    op.drop_index("ix_messages_message_id_header", "messages")
    for table in (
        "event_firsts",
        "event_message_tags",
        "event_tags",
        "event_rcpt_domains",
        "event_counts",
    ):
        op.drop_table(table)
