"""Every statement of the queue, named and kept together (procrastinate-style), per backend.

The queue's hot statements (group commit, claims, outcome batches, feedback) bypass
SQLAlchemy: under load every ``await`` costs a full event-loop iteration, and a SQLAlchemy
transaction over aiosqlite takes about fifteen. Here a transaction is one hop: one call into
the SQLite runner's thread (``relay.queue.sqlite``) or one statement on a dedicated asyncpg
connection (``relay.queue.postgres``). The few management statements (clearing a domain's
queue from the admin API) run inside the caller's SQLAlchemy transaction
(``relay.queue.control``); they are plain SQL that both backends accept.

The pending-state predicate is a literal, never bound parameters, so that both planners match
it to the partial index ``ix_recipients_due``.
"""

from __future__ import annotations

# LISTEN/NOTIFY channel: the PostgreSQL group commit notifies it (in the same statement), every
# node's delivery workers listen on it.
NOTIFY_CHANNEL = "relay_queue"

PENDING = "recipients.state IN ('queued', 'deferred')"
# Never tried and due after its creation: a recipient of a scheduled message (its own partial
# index, ix_recipients_scheduled, written with the same terms).
SCHEDULED = "recipients.state = 'queued' AND recipients.next_attempt_at > recipients.created_at"
# On hold (relay queue hold): not pending, so no claim ever sees it (nor the index the claim
# reads); its own partial index, ix_recipients_held, has the same terms.
HELD = "recipients.state = 'held'"
# Not final: pending or held. A held recipient's message still needs its body.
LIVE = "recipients.state IN ('queued', 'deferred', 'held')"
# A message none of whose recipients is still live: its body is no longer needed.
FINISHED = (
    f"NOT EXISTS (SELECT 1 FROM recipients WHERE recipients.message_id = messages.id AND {LIVE})"
)
# A delivery worker holds the recipient right now (the claim's own test, negated).
LEASED_NOW = "recipients.lease_until IS NOT NULL AND recipients.lease_until >= :now"
NOT_LEASED = "(recipients.lease_until IS NULL OR recipients.lease_until < :now)"

MESSAGE_COLUMNS = (
    "id, user_id, domain_id, credential_id, api_key_id, source, mail_from, header_from, "
    "subject, message_id_header, client_ip, size, body, not_before, created_at"
)
RECIPIENT_COLUMNS = (
    "message_id, rcpt, rcpt_domain, state, attempts, next_attempt_at, body, created_at, updated_at"
)
EVENT_COLUMNS = (
    "created_at, user_id, domain_id, message_id, recipient, event, smtp_code, smtp_response, data"
)
# What a claim returns per recipient (model.ClaimedRecipient) and a load per message
# (model.QueuedMessage, without its recipients).
CLAIMED_COLUMNS = "id, message_id, rcpt, rcpt_domain, attempts, created_at, body"
LOADED_COLUMNS = (
    "id, user_id, domain_id, mail_from, header_from, subject, body, not_before, created_at"
)

SUPPRESS_UPSERT = (
    "ON CONFLICT (user_id, email) DO UPDATE SET reason = excluded.reason, source = excluded.source"
)

# == SQLite (sqlite3 in the runner's thread: executemany, one transaction per call) ============

SQLITE_INSERT_MESSAGE = f"""
INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQLITE_INSERT_RECIPIENT = f"""
INSERT INTO recipients ({RECIPIENT_COLUMNS}) VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?6, ?6)
"""
SQLITE_INSERT_EVENT = f"""
INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQLITE_SUPPRESS = f"""
INSERT INTO suppressions (user_id, email, reason, source, created_at) VALUES (?, ?, ?, ?, ?)
{SUPPRESS_UPSERT}
"""

# A claim leases due recipients (a scheduled one is due at its message's not_before).
SQLITE_CLAIM = f"""
UPDATE recipients SET lease_owner = ?, lease_until = ?
WHERE id IN (
    SELECT id FROM recipients
    WHERE {PENDING} AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)
    ORDER BY next_attempt_at, id LIMIT ?)
RETURNING {CLAIMED_COLUMNS}
"""
SQLITE_LOAD = f"SELECT {LOADED_COLUMNS} FROM messages WHERE id IN ({{marks}})"

# An outcome applies only to a recipient not final yet: the late result of an expired lease
# never overwrites a final state. A recipient's own body goes once it is final. A recipient put
# on hold while this attempt ran (held is not pending, but live) takes a final outcome, and
# stays held after a deferral: the hold never yanks a delivery, nor is undone by one.
SQLITE_OUTCOME = f"""
UPDATE recipients SET
    state = CASE WHEN state = 'held' AND ?2 IN ('queued', 'deferred') THEN 'held' ELSE ?2 END,
    attempts = ?3, next_attempt_at = ?4, last_code = ?5,
    last_response = ?6, lease_owner = NULL, lease_until = NULL, updated_at = ?7,
    body = CASE WHEN ?2 IN ('queued', 'deferred') THEN body END
WHERE id = ?1 AND {LIVE}
"""
SQLITE_DROP_BODIES = f"""
UPDATE messages SET body = NULL WHERE id IN ({{marks}}) AND body IS NOT NULL AND {FINISHED}
"""
SQLITE_RELEASE = f"""
UPDATE recipients SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ? AND {PENDING}
"""
SQLITE_RELEASE_IDS = SQLITE_RELEASE.rstrip() + " AND id IN ({marks})"
# A worker keeps its leases short and renews those of the recipients it is still working on
# (mta/worker.py), so a node that dies holds its recipients for one short lease at most.
SQLITE_RENEW = f"""
UPDATE recipients SET lease_until = ? WHERE lease_owner = ? AND {PENDING} AND id IN ({{marks}})
"""
# The owners holding live leases whose names start with a prefix (this node's processes, past
# and present): at start a worker releases those of incarnations that are gone. Once per start,
# over the pending part only (ix_recipients_due).
SQLITE_LEASE_OWNERS = f"""
SELECT DISTINCT lease_owner FROM recipients
WHERE {PENDING} AND lease_owner IS NOT NULL AND substr(lease_owner, 1, ?) = ?
"""

# (pending, of which scheduled and not yet due, held): three index-only counts.
SQLITE_DEPTH = f"""
SELECT (SELECT count(*) FROM recipients WHERE {PENDING}),
       (SELECT count(*) FROM recipients WHERE {SCHEDULED} AND next_attempt_at > ?),
       (SELECT count(*) FROM recipients WHERE {HELD})
"""

# The earliest time a pending recipient comes due after now (the delivery worker's timer): a
# scheduled message, or a deferral's next attempt. The first entry of ix_recipients_due after
# now.
SQLITE_NEXT_SCHEDULED = f"""
SELECT min(next_attempt_at) FROM recipients WHERE {PENDING} AND next_attempt_at > ?
"""

# Feedback (relay/queue/feedback.py): an item is recorded only when its message and recipient
# are known and its dedupe key (if any) was never seen. The event's account and domain come
# from the message row. A batch at a time (``_feedback`` in relay/queue/sqlite.py): the
# recorded items go into a scratch table in memory, then each step is one statement over all
# of them. The caller has dropped repeated keys within the batch.
SQLITE_FEEDBACK_SCRATCH = """
CREATE TEMP TABLE IF NOT EXISTS feedback_batch (
    ord INTEGER PRIMARY KEY, mid TEXT, rcpt TEXT, event TEXT, code INTEGER, resp TEXT,
    data TEXT, suppress TEXT, reason TEXT, key TEXT, ts REAL,
    user_id INTEGER, domain_id INTEGER, qrcpt TEXT)
"""
SQLITE_FEEDBACK_CLEAR = "DELETE FROM temp.feedback_batch"
# The batch arrives as one JSON array of item arrays: one statement, where executemany would
# hand the interpreter lock back and forth once per row (slow while the accounting reader's
# thread parses). An item is kept only when it is to be recorded, with its match: the account
# and domain of its message and the recipient as queued.
SQLITE_FEEDBACK_ITEMS = """
WITH i AS MATERIALIZED (
    SELECT value ->> 0 AS ord, value ->> 1 AS mid, value ->> 2 AS rcpt, value ->> 3 AS event,
        value ->> 4 AS code, value ->> 5 AS resp, value ->> 6 AS data, value ->> 7 AS suppress,
        value ->> 8 AS reason, value ->> 9 AS key, value ->> 10 AS ts
    FROM json_each(?)
)
INSERT OR IGNORE INTO temp.feedback_batch  -- ignored: a second recipient row that matches
SELECT i.*, m.user_id, m.domain_id, r.rcpt
FROM i
CROSS JOIN messages m ON m.id = i.mid
CROSS JOIN recipients r ON r.message_id = m.id AND lower(r.rcpt) = lower(i.rcpt)
WHERE i.key IS NULL OR NOT EXISTS (SELECT 1 FROM feedback_keys k WHERE k.key = i.key)
"""
SQLITE_FEEDBACK_KEYS = """
INSERT INTO feedback_keys (key, created_at)
SELECT key, ts FROM temp.feedback_batch WHERE key IS NOT NULL
"""
# Each item's event, then its ``suppressed`` event when it suppresses (ids in item order).
SQLITE_FEEDBACK_EVENTS = f"""
INSERT INTO events ({EVENT_COLUMNS})
SELECT ts, user_id, domain_id, mid, qrcpt, event, code, resp, data FROM (
    SELECT ord, 0 AS n, ts, user_id, domain_id, mid, qrcpt, event, code, resp, data
    FROM temp.feedback_batch
    UNION ALL
    SELECT ord, 1, ts, user_id, domain_id, mid, qrcpt, 'suppressed', code, resp,
        '{{"source": "' || suppress || '"}}'
    FROM temp.feedback_batch WHERE suppress IS NOT NULL
) ORDER BY ord, n
"""
SQLITE_FEEDBACK_RECORDED = """
SELECT ord, user_id, qrcpt, suppress, reason FROM temp.feedback_batch ORDER BY ord
"""

# == PostgreSQL (asyncpg; one statement = one round trip, atomic) ==============================
# Data-modifying CTEs over unnest() arrays.


def _pg_insert_events(first: int) -> str:
    """The events insert from nine arrays, the first of them parameter ``$first``."""
    types = ("float8", "int", "int", "text", "text", "text", "int", "text", "json")
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
    return f"INSERT INTO events ({EVENT_COLUMNS}) SELECT * FROM unnest({arrays})"


# The group commit: messages, recipients, their events and the NOTIFY that wakes delivery
# workers on every node (delivered at commit).
PG_INGEST = f"""
WITH m AS (
    INSERT INTO messages ({MESSAGE_COLUMNS})
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[], $13::bytea[],
        $14::float8[], $15::float8[])
), r AS (
    INSERT INTO recipients ({RECIPIENT_COLUMNS})
    SELECT mid, rcpt, dom, 'queued', 0, due, body, ts, ts
    FROM unnest($16::text[], $17::text[], $18::text[], $19::float8[], $20::bytea[],
        $21::float8[]) AS x(mid, rcpt, dom, due, body, ts)
), e AS (
    {_pg_insert_events(22)}
)
SELECT pg_notify('{NOTIFY_CHANNEL}', '') WHERE cardinality($1::text[]) > 0
"""

# FOR UPDATE SKIP LOCKED: rows another node is claiming right now are skipped, not waited for.
PG_CLAIM = f"""
UPDATE recipients SET lease_owner = $1, lease_until = $2
WHERE id IN (
    SELECT id FROM recipients
    WHERE {PENDING} AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3)
    ORDER BY next_attempt_at, id LIMIT $4
    FOR UPDATE SKIP LOCKED)
RETURNING {CLAIMED_COLUMNS}
"""
PG_LOAD = f"SELECT {LOADED_COLUMNS} FROM messages WHERE id = ANY($1::text[])"

# Recipients, suppressions and events in one statement. The body drop is a second statement:
# every sub-statement of a WITH query sees the snapshot from before the query, so it would not
# see the recipients this one just finalized.
PG_OUTCOMES = f"""
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::int[],
        $6::text[], $7::float8[]) AS o(id, state, attempts, nxt, code, resp, upd)
), u AS (
    UPDATE recipients SET
        -- held during the attempt: stays held unless the outcome is final (see SQLITE_OUTCOME)
        state = CASE WHEN recipients.state = 'held' AND o.state IN ('queued', 'deferred')
            THEN 'held' ELSE o.state END,
        attempts = o.attempts, next_attempt_at = o.nxt,
        last_code = o.code, last_response = o.resp, lease_owner = NULL, lease_until = NULL,
        updated_at = o.upd,
        body = CASE WHEN o.state IN ('queued', 'deferred') THEN recipients.body END
    FROM o WHERE recipients.id = o.id AND {LIVE}
    RETURNING recipients.id
), s AS (
    INSERT INTO suppressions (user_id, email, reason, source, created_at)
    SELECT uid, email, reason, source, $12::timestamp
    FROM unnest($8::int[], $9::text[], $10::text[], $11::text[]) AS x(uid, email, reason, source)
    {SUPPRESS_UPSERT}
)
{_pg_insert_events(13)}
"""
PG_DROP_BODIES = f"""
UPDATE messages SET body = NULL WHERE id = ANY($1::text[]) AND body IS NOT NULL AND {FINISHED}
"""
PG_RELEASE = f"""
UPDATE recipients SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1 AND {PENDING}
"""
PG_RELEASE_IDS = PG_RELEASE.rstrip() + " AND id = ANY($2::bigint[])"
PG_RENEW = f"""
UPDATE recipients SET lease_until = $3
WHERE lease_owner = $1 AND {PENDING} AND id = ANY($2::bigint[])
"""
PG_LEASE_OWNERS = f"""
SELECT DISTINCT lease_owner FROM recipients
WHERE {PENDING} AND lease_owner IS NOT NULL AND left(lease_owner, length($1)) = $1
"""
PG_DEPTH = f"""
SELECT (SELECT count(*) FROM recipients WHERE {PENDING}),
       (SELECT count(*) FROM recipients WHERE {SCHEDULED} AND next_attempt_at > $1),
       (SELECT count(*) FROM recipients WHERE {HELD})
"""
PG_NEXT_SCHEDULED = f"""
SELECT min(next_attempt_at) FROM recipients WHERE {PENDING} AND next_attempt_at > $1
"""

PG_FEEDBACK = f"""
WITH f AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
        $7::json[], $8::text[], $9::text[], $10::text[], $11::float8[])
        AS f(ord, mid, rcpt, event, code, resp, data, suppress, reason, key, ts)
), m AS (
    SELECT f.*, ms.user_id, ms.domain_id, r.rcpt AS qrcpt
    FROM f JOIN messages ms ON ms.id = f.mid
    CROSS JOIN LATERAL (
        SELECT rcpt FROM recipients
        WHERE recipients.message_id = f.mid AND lower(recipients.rcpt) = lower(f.rcpt)
        LIMIT 1) r
), k AS (
    -- In key order: concurrent batches (relay pmta-accounting's parallel writers) that share
    -- keys then lock them in the same order and wait for each other, never deadlock.
    INSERT INTO feedback_keys (key, created_at)
    SELECT key, ts FROM m WHERE key IS NOT NULL ORDER BY key
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), ok AS (
    SELECT m.* FROM m WHERE m.key IS NULL OR m.key IN (SELECT key FROM k)
), e AS (
    INSERT INTO events ({EVENT_COLUMNS})
    SELECT ts, user_id, domain_id, mid, qrcpt, event, code, resp, data FROM (
        SELECT ord, 0 AS n, ts, user_id, domain_id, mid, qrcpt, event, code, resp, data FROM ok
        UNION ALL
        SELECT ord, 1, ts, user_id, domain_id, mid, qrcpt, 'suppressed', code, resp,
            json_build_object('source', suppress)
        FROM ok WHERE suppress IS NOT NULL
    ) x ORDER BY ord, n
), s AS (
    INSERT INTO suppressions (user_id, email, reason, source, created_at)
    SELECT DISTINCT ON (user_id, lower(qrcpt)) user_id, lower(qrcpt), reason, suppress,
        $12::timestamp
    FROM ok WHERE suppress IS NOT NULL
    ORDER BY user_id, lower(qrcpt), ord DESC
    {SUPPRESS_UPSERT}
)
SELECT ord, user_id, lower(qrcpt) AS email FROM ok
"""

# == Management (SQLAlchemy text() in the caller's transaction; both backends) =================

# Every pending or held recipient of a domain's messages becomes failed (a leased one too:
# if that attempt still completes, the worker's outcome no longer applies).
FAIL_DOMAIN_PENDING = f"""
UPDATE recipients SET state = 'failed', updated_at = :now, lease_owner = NULL,
    lease_until = NULL, last_response = :reason, body = NULL
WHERE {LIVE} AND message_id IN (SELECT id FROM messages WHERE domain_id = :domain_id)
RETURNING message_id, rcpt
"""
DROP_DOMAIN_BODIES = f"""
UPDATE messages SET body = NULL WHERE domain_id = :domain_id AND body IS NOT NULL AND {FINISHED}
"""
INSERT_EVENT = f"""
INSERT INTO events ({EVENT_COLUMNS}) VALUES (:created_at, :user_id, :domain_id, :message_id,
    :recipient, :event, :smtp_code, :smtp_response, :data)
"""

# == Queue control (relay/queue/control.py: `relay queue ...`, the queue.* admin commands) ======
# SQLAlchemy text() with named parameters, both backends. Each change is a batch of at most
# :batch recipients in its own short transaction; a selection is the AND of the terms below.
# The state term always comes first and spells its part's index predicate (PENDING or HELD),
# so both planners read ix_recipients_due or ix_recipients_held, never the whole table.

SEL_MESSAGES = "recipients.message_id IN :message_ids"
# The sender domain is the gateway domain the message was accepted for (any account's).
SEL_SENDER_DOMAIN = """EXISTS (SELECT 1 FROM messages
    JOIN gateway_domains ON gateway_domains.id = messages.domain_id
    WHERE messages.id = recipients.message_id AND gateway_domains.name = :sender_domain)"""
SEL_RECIPIENT_DOMAIN = "recipients.rcpt_domain = :recipient_domain"
SEL_OLDER_THAN = "recipients.created_at < :created_before"
# The states the views show (model.SHOWN_STATES): each lies within one part.
SEL_STATE = {
    "queued": f"{PENDING} AND recipients.state = 'queued' AND recipients.next_attempt_at <= :now",
    "scheduled": f"{PENDING} AND recipients.state = 'queued' AND recipients.next_attempt_at > :now",
    "deferred": f"{PENDING} AND recipients.state = 'deferred'",
    "held": HELD,
}

# A page of the listing, in next-attempt order (keyset: after (:after_at, :after_id)).
QUEUE_LIST = """
SELECT recipients.id, recipients.message_id, recipients.rcpt, recipients.state,
    recipients.attempts, recipients.next_attempt_at, recipients.last_code,
    recipients.last_response, recipients.lease_until, messages.created_at, messages.mail_from,
    messages.size, gateway_domains.name AS sender_domain
FROM recipients
JOIN messages ON messages.id = recipients.message_id
LEFT JOIN gateway_domains ON gateway_domains.id = messages.domain_id
WHERE {where}
    AND recipients.next_attempt_at >= :after_at
    AND (recipients.next_attempt_at > :after_at OR recipients.id > :after_id)
ORDER BY recipients.next_attempt_at, recipients.id
LIMIT :limit
"""
QUEUE_KNOWN_MESSAGES = "SELECT id FROM messages WHERE id IN :message_ids"

# Each change selects a batch by {where} and repeats its own guard outside the subquery: on
# PostgreSQL a row a delivery worker changed meanwhile (claimed, finished) is checked again
# against the guard after its lock is granted, so the guard, not the snapshot, decides.

# Retry: deferred recipients waiting for a later attempt become due now; one a worker holds
# right now is being tried already. Scheduled messages keep their time (they are 'queued').
RETRY_GUARD = f"{PENDING} AND recipients.state = 'deferred' AND {NOT_LEASED}"
RETRY_WAITING = f"{RETRY_GUARD} AND recipients.next_attempt_at > :now"
QUEUE_RETRY = f"""
UPDATE recipients SET next_attempt_at = :now, updated_at = :now
WHERE recipients.id IN (SELECT recipients.id FROM recipients WHERE {{where}} LIMIT :batch)
    AND {RETRY_WAITING}
RETURNING recipients.message_id
"""
# Hold: pending recipients become held, leased ones too: their attempt goes on, and its
# outcome applies (final) or keeps them held (a deferral), see SQLITE_OUTCOME.
QUEUE_HOLD = f"""
UPDATE recipients SET state = 'held', updated_at = :now
WHERE recipients.id IN (SELECT recipients.id FROM recipients WHERE {{where}} LIMIT :batch)
    AND {PENDING}
RETURNING recipients.message_id, recipients.lease_until
"""
# Release: back to what they were, queued (never tried: due at acceptance, or at the message's
# scheduled time) or deferred (tried before: due now).
QUEUE_RELEASE = f"""
UPDATE recipients SET
    state = CASE WHEN recipients.attempts > 0 THEN 'deferred' ELSE 'queued' END,
    next_attempt_at = CASE WHEN recipients.attempts > 0 THEN :now
        ELSE recipients.next_attempt_at END,
    updated_at = :now
WHERE recipients.id IN (SELECT recipients.id FROM recipients WHERE {{where}} LIMIT :batch)
    AND {HELD}
RETURNING recipients.message_id
"""
# Delete: failed for good, as cleardomainqueue does, but never under a running delivery: a
# recipient a worker holds right now is put on hold instead (QUEUE_HOLD) and reported.
DELETE_GUARD = f"{LIVE} AND {NOT_LEASED}"
QUEUE_DELETE = f"""
UPDATE recipients SET state = 'failed', updated_at = :now, last_response = :reason,
    lease_owner = NULL, lease_until = NULL, body = NULL
WHERE recipients.id IN (SELECT recipients.id FROM recipients WHERE {{where}} LIMIT :batch)
    AND {DELETE_GUARD}
RETURNING recipients.message_id, recipients.rcpt
"""
# Per message, the selected recipients a worker holds right now.
QUEUE_BUSY = (
    "SELECT recipients.message_id, count(*) FROM recipients WHERE {where} "
    "GROUP BY recipients.message_id"
)
QUEUE_MESSAGE_OWNERS = "SELECT id, user_id, domain_id FROM messages WHERE id IN :message_ids"
DROP_FINISHED_BODIES = f"""
UPDATE messages SET body = NULL WHERE id IN :message_ids AND body IS NOT NULL AND {FINISHED}
"""
# Wakes every node's delivery workers (PostgreSQL; delivered at commit).
NOTIFY_QUEUE = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
