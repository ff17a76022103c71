"""events at scale: daily partitions (PostgreSQL), rollups kept by triggers, indexes

Revision ID: 0003
Revises: 0002

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
down_revision: str | None = "0002"
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
# The recipient-domain statistics' classes: Sent (a recipient's server took it) and Failed
# (bounced, refused at RCPT, given up), each counted once per recipient, with delivery times.
CLASSES = {
    "sent": ("delivered", "accepted-by-mta"),
    "failed": ("bounced", "rejected", "failed"),
}
TIMED = tuple(e for names in CLASSES.values() for e in names)
# Delivery-speed histogram bucket bounds (seconds): < 1, 1-5, 5-10, 10-30, 30-60, 1-5m, 5-10m.
BOUNDS = (1, 5, 10, 30, 60, 300, 600)
# PostgreSQL, when pg_trgm can be installed: the text the Query filter searches, indexed with
# trigrams. An event's own fields (per partition) and its message's (message_search, one row
# per message, written when its first 'accepted' event is). chr(1) keeps a match from
# spanning two fields.
EVENT_SEARCH = "lower(coalesce(recipient, '') || chr(1) || coalesce(smtp_response, ''))"
MESSAGE_SEARCH = (
    "lower(m.id || chr(1) || m.subject || chr(1) || m.header_from || chr(1) || m.mail_from "
    "|| chr(1) || m.message_id_header || chr(1) || m.client_ip)"
)
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


def _class_case(column: str) -> str:
    whens = " ".join(f"WHEN {column} IN {_in(names)} THEN '{k}'" for k, names in CLASSES.items())
    return f"CASE {whens} END"


# event_rcpt_domains' value columns, in order: n, accepted, then per class the counted-once
# events, and of those with a delivery time: how many, sum, min, max, histogram.
RD_TIMING = ("timed", "seconds", "min", "max", *(f"h{i}" for i in range(8)))
RD_COLUMNS = ("n", "accepted", *CLASSES, *(f"{k}_{c}" for k in CLASSES for c in RD_TIMING))


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
CREATE TABLE {PARTITION_SCHEMA}.message_search (
    message_id varchar(36) NOT NULL PRIMARY KEY,
    created_at double precision NOT NULL,
    search text NOT NULL
);
CREATE INDEX message_search_created ON {PARTITION_SCHEMA}.message_search (created_at);
"""

_PG_SECONDS = (
    f"CASE WHEN json_typeof(u.data->'seconds') = 'number' "
    f"AND (u.data->>'seconds') ~ '{PG_NUMBER}' THEN (u.data->>'seconds')::float8 "
    "ELSE u.created_at - (SELECT m.created_at FROM messages m WHERE m.id = u.message_id) END"
)


def _pg_rd_values() -> str:
    values = ["count(*)", "count(*) FILTER (WHERE event = 'accepted')"]
    values += [f"count(*) FILTER (WHERE uniq AND klass = '{k}')" for k in CLASSES]
    for k in CLASSES:
        only = f"FILTER (WHERE klass = '{k}')"
        values += [
            f"count(secs) {only}",
            f"coalesce(sum(secs) {only}, 0)",
            f"min(secs) {only}",
            f"max(secs) {only}",
        ]
        values += [f"count(*) FILTER (WHERE klass = '{k}' AND {c})" for c in _histogram("secs")]
    return ",\n            ".join(values)


_PG_RD_VALUES = _pg_rd_values()

# One statement per INSERT statement on events, whoever wrote it. Every sub-statement below is
# a data-modifying CTE of one query: one pass over the transition table.
PG_ROLLUP_FUNCTION = f"""
CREATE OR REPLACE FUNCTION events_rollup() RETURNS trigger LANGUAGE plpgsql
-- A statement's worth of rows is small work: compiling it (JIT) would cost seconds.
SET jit = off
AS $fn$
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
    ), w AS MATERIALIZED (
        SELECT u.*, {_class_case("u.event")} AS klass,
            CASE WHEN u.uniq AND u.event IN {_in(TIMED)} THEN {_PG_SECONDS} END AS secs
        FROM u
    ), c AS (
        INSERT INTO event_counts (user_id, domain_id, day, event, smtp_code, seq, n, uniq,
            last_at)
        SELECT user_id, domain_id, day, event, smtp_code, s, count(*),
            count(*) FILTER (WHERE uniq), max(created_at)
        FROM u GROUP BY user_id, domain_id, day, event, smtp_code
    ), r AS (
        INSERT INTO event_rcpt_domains (domain_id, day, rcpt_domain, seq, {", ".join(RD_COLUMNS)})
        SELECT domain_id, day, substr(rcpt, strpos(rcpt, '@') + 1), s,
            {_PG_RD_VALUES}
        FROM w WHERE rcpt IS NOT NULL
        GROUP BY domain_id, day, substr(rcpt, strpos(rcpt, '@') + 1)
    ), ms AS (
        -- Index probes per message (LATERAL), never a scan of the messages table.
        INSERT INTO {PARTITION_SCHEMA}.message_search (message_id, created_at, search)
        SELECT m.id, m.created_at, {MESSAGE_SEARCH}
        FROM (SELECT DISTINCT message_id FROM n WHERE event = 'accepted') a
        CROSS JOIN LATERAL (SELECT * FROM messages WHERE messages.id = a.message_id) m
        ON CONFLICT DO NOTHING
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
        SELECT x.message_id, x.tags
        FROM (
            SELECT DISTINCT message_id FROM n
            WHERE message_id IS NOT NULL AND event <> 'accepted'
        ) a
        CROSS JOIN LATERAL (
            SELECT message_id, tags FROM event_message_tags
            WHERE event_message_tags.message_id = a.message_id
        ) x
        WHERE x.message_id NOT IN (SELECT message_id FROM tg)
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


def _try_trigrams() -> bool:
    """Install pg_trgm if the role may (a trusted extension: the database owner may); without
    it the Query filter works the same, scanning instead of using an index."""
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return False
    return True


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
    if _try_trigrams():
        op.execute(
            f"CREATE INDEX message_search_text ON {PARTITION_SCHEMA}.message_search "
            "USING gin (search gin_trgm_ops)"
        )
        names = bind.exec_driver_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        ).scalars()
        for name in list(names):
            op.execute(
                f"CREATE INDEX {name}_search ON {PARTITION_SCHEMA}.{name} "
                f"USING gin (({EVENT_SEARCH}) gin_trgm_ops)"
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


def _sq_rd_values() -> str:
    values = ["1", "NEW.event = 'accepted'"]
    values += [f"v.uniq AND v.klass IS '{k}'" for k in CLASSES]
    for k in CLASSES:
        timed = f"v.klass IS '{k}' AND v.secs IS NOT NULL"
        values += [
            timed,
            f"CASE WHEN {timed} THEN v.secs ELSE 0 END",
            f"CASE WHEN {timed} THEN v.secs END",
            f"CASE WHEN {timed} THEN v.secs END",
        ]
        values += [f"coalesce(v.klass IS '{k}' AND {c}, 0)" for c in _histogram("v.secs")]
    return ",\n        ".join(values)


def _sq_rd_update() -> str:
    """Add the new row's counts; min and max of the seconds, NULL meaning none."""
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
    return ",\n        ".join(sets)


_SQ_RD_VALUES = _sq_rd_values()
_SQ_RD_UPDATE = _sq_rd_update()

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

    INSERT INTO event_rcpt_domains (domain_id, day, rcpt_domain, seq, {", ".join(RD_COLUMNS)})
    SELECT NEW.domain_id, {_SQ_DAY},
        lower(substr(NEW.recipient, instr(NEW.recipient, '@') + 1)), 0,
        {_SQ_RD_VALUES}
    FROM (SELECT {_SQ_UNIQ} AS uniq, {_SQ_SECONDS} AS secs, {_class_case("NEW.event")} AS klass) v
    WHERE NEW.recipient IS NOT NULL
    ON CONFLICT (domain_id, day, rcpt_domain, seq) DO UPDATE SET
        {_SQ_RD_UPDATE};

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
        sa.Column("seq", sa.BigInteger(), nullable=False),
        *(
            sa.Column(c, sa.Float(), nullable=c.endswith(("_min", "_max")))
            if c.endswith(("_seconds", "_min", "_max"))
            else sa.Column(c, sa.BigInteger(), nullable=False)
            for c in RD_COLUMNS
        ),
    )
    op.create_index(
        "uq_event_rcpt_domains_key",
        "event_rcpt_domains",
        ["domain_id", "day", "rcpt_domain", "seq"],
        unique=True,
        postgresql_include=[
            "n",
            "accepted",
            "sent",
            "failed",
            "sent_timed",
            "sent_seconds",
            "sent_min",
            "sent_max",
        ],
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
