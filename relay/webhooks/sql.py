"""The webhook workers' SQL, per backend, kept together (the outbox trigger itself is DDL, in
migration 0004).

Claims are leases, as for mail delivery: a claimed delivery carries ``lease_owner`` and
``lease_until`` and nobody else claims it before then; the worker renews the leases of what it
holds, so a crashed worker's deliveries come back within one lease. On PostgreSQL a claim is
one statement: for each enabled webhook, its due deliveries up to the room the worker has for
that webhook (relay/webhooks/worker.py), ``FOR UPDATE SKIP LOCKED``, so several workers and
nodes claim at once without waiting on each other or taking the same delivery. SQLite has one
writer: candidates are read first (WAL readers never wait), then leased in one short write
transaction that re-checks each row. Webhooks are visited in random order, so one claim's
limit is not always spent on the same webhooks first.
"""

from __future__ import annotations

# Columns of a claimed delivery, in relay.webhooks.payload.Delivery's order.
DELIVERY_COLUMNS = """d.id, d.webhook_id, d.msg_id, d.event, d.attempts, d.created_at, d.user_id,
    d.domain_id, d.event_id, d.message_id, d.recipient, d.logged_at, d.smtp_code,
    d.smtp_response, d.data, d.header_from, d.subject, d.message_id_header, w.url, g.name"""

# -- SQLite (sqlite3 in a SqliteRunner thread) -------------------------------------------------

# Set on the workers' own connection (see relay/webhooks/store.py): WAL commits without fsync;
# a later synchronous commit of any connection makes them durable with it.
SQLITE_RELAXED_DURABILITY = "PRAGMA synchronous=NORMAL"

SQLITE_ENABLED_WEBHOOKS = "SELECT id FROM webhooks WHERE status = 'Enabled'"

SQLITE_DUE = """
SELECT id FROM webhook_deliveries
WHERE webhook_id = ? AND state = 'pending' AND next_attempt_at <= ?
  AND (lease_until IS NULL OR lease_until < ?)
ORDER BY next_attempt_at LIMIT ?
"""

SQLITE_LEASE = """
UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ?
WHERE id = ? AND state = 'pending' AND (lease_until IS NULL OR lease_until < ?)
"""

SQLITE_LOAD = f"""
SELECT {DELIVERY_COLUMNS}
FROM webhook_deliveries AS d
JOIN webhooks AS w ON w.id = d.webhook_id
JOIN gateway_domains AS g ON g.id = d.domain_id
WHERE d.id IN ({{marks}}) AND d.lease_owner = ?
"""

SQLITE_FINISH = """
UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, lease_owner = NULL,
    lease_until = NULL, updated_at = ?
WHERE id = ? AND state = 'pending' AND lease_owner = ?
"""

SQLITE_INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, attempted_at, status, latency,
    outcome, error, response)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

SQLITE_WEBHOOK_STATS = """
UPDATE webhooks SET last_attempt_at = ?, last_status = ?, last_error = ?,
    failures = CASE WHEN ? THEN ? ELSE failures + ? END
WHERE id = ?
"""

SQLITE_INSERT_EVENT = """
INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
    smtp_response, data)
VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)
"""

SQLITE_RENEW = """
UPDATE webhook_deliveries SET lease_until = ?
WHERE id IN ({marks}) AND lease_owner = ? AND state = 'pending'
"""

SQLITE_RELEASE = """
UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL
WHERE id IN ({marks}) AND lease_owner = ? AND state = 'pending'
"""
# At start: the owners of this node's leases (relay/leases.py), and all of one owner's
# deliveries given back (an earlier incarnation that died). Once per start.
SQLITE_LEASE_OWNERS = """
SELECT DISTINCT lease_owner FROM webhook_deliveries
WHERE state = 'pending' AND lease_owner IS NOT NULL AND substr(lease_owner, 1, ?) = ?
"""
SQLITE_RELEASE_OWNER = """
UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL
WHERE lease_owner = ? AND state = 'pending'
"""

# -- PostgreSQL (asyncpg) ------------------------------------------------------------------------

PG_CLAIM = f"""
WITH room AS (
    SELECT * FROM unnest($5::int[], $6::int[]) AS r(webhook_id, n)
), picked AS (
    SELECT x.id FROM (
        SELECT id FROM webhooks WHERE status = 'Enabled' ORDER BY random()
    ) AS w
    LEFT JOIN room ON room.webhook_id = w.id
    CROSS JOIN LATERAL (
        SELECT d.id FROM webhook_deliveries AS d
        WHERE d.webhook_id = w.id AND d.state = 'pending' AND d.next_attempt_at <= $3
          AND (d.lease_until IS NULL OR d.lease_until < $3)
        ORDER BY d.next_attempt_at
        LIMIT COALESCE(room.n, $4)
        FOR UPDATE SKIP LOCKED
    ) AS x
    LIMIT $7
)
UPDATE webhook_deliveries AS d SET lease_owner = $1, lease_until = $2
FROM picked, webhooks AS w, gateway_domains AS g
WHERE d.id = picked.id AND w.id = d.webhook_id AND g.id = d.domain_id
RETURNING {DELIVERY_COLUMNS}
"""

# Rows of webhooks are locked in id order first: two workers recording attempts of the same
# webhooks at once then wait for each other instead of deadlocking.
PG_LOCK_WEBHOOKS = "SELECT id FROM webhooks WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE"

# Deliveries, attempts, webhook statistics and give-up events of a batch in one statement. The
# give-up event is written only for deliveries this worker still held (``u``).
PG_RECORD = """
WITH o AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::float8[])
        AS o(id, state, attempts, nxt, at)
), u AS (
    UPDATE webhook_deliveries AS d SET state = o.state, attempts = o.attempts,
        next_attempt_at = o.nxt, lease_owner = NULL, lease_until = NULL, updated_at = o.at
    FROM o WHERE d.id = o.id AND d.state = 'pending' AND d.lease_owner = $6
    RETURNING d.id, d.state
), a AS (
    INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, attempted_at, status,
        latency, outcome, error, response)
    SELECT * FROM unnest($7::bigint[], $8::int[], $9::int[], $10::float8[], $11::int[],
        $12::float8[], $13::text[], $14::text[], $15::text[])
), s AS (
    UPDATE webhooks SET last_attempt_at = s.at, last_status = s.status, last_error = s.error,
        failures = CASE WHEN s.reset THEN s.n ELSE webhooks.failures + s.n END
    FROM unnest($16::int[], $17::float8[], $18::int[], $19::text[], $20::bool[], $21::int[])
        AS s(id, at, status, error, reset, n)
    WHERE webhooks.id = s.id
)
INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, data)
SELECT e.at, e.uid, e.did, e.mid, e.rcpt, $22, e.data
FROM unnest($23::bigint[], $24::float8[], $25::int[], $26::int[], $27::text[], $28::text[],
    $29::json[]) AS e(delivery_id, at, uid, did, mid, rcpt, data)
WHERE e.delivery_id IN (SELECT id FROM u WHERE u.state = 'failed')
"""

PG_RENEW = """
UPDATE webhook_deliveries SET lease_until = $1
WHERE id = ANY($2::bigint[]) AND lease_owner = $3 AND state = 'pending'
"""

PG_RELEASE = """
UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'
"""
PG_LEASE_OWNERS = """
SELECT DISTINCT lease_owner FROM webhook_deliveries
WHERE state = 'pending' AND lease_owner IS NOT NULL AND left(lease_owner, length($1)) = $1
"""
PG_RELEASE_OWNER = """
UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL
WHERE lease_owner = $1 AND state = 'pending'
"""

# -- both (plain SQL, no parameters beyond the placeholders each driver rewrites) -------------

# Pending deliveries of webhooks deleted by any path (user.delete, a domain's removal): cancel.
CANCEL_ORPHANS = """
UPDATE webhook_deliveries SET state = 'cancelled', lease_owner = NULL, lease_until = NULL,
    updated_at = {now}
WHERE state = 'pending' AND webhook_id IN (SELECT id FROM webhooks WHERE status <> 'Enabled')
"""

# Retention: among the oldest rows (by id, so without an index of their own), those finished
# before the cutoff. Rows older than the cutoff are finished unless webhooks.max_age exceeds
# webhooks.retention_days; such a row only delays the purge until it is.
PURGE_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM (SELECT id, state, updated_at FROM webhook_deliveries ORDER BY id LIMIT {limit})
        AS oldest
    WHERE state <> 'pending' AND updated_at < {cutoff})
"""

PURGE_ATTEMPTS = """
DELETE FROM webhook_attempts WHERE id IN (
    SELECT id FROM (SELECT id, attempted_at FROM webhook_attempts ORDER BY id LIMIT {limit})
        AS oldest
    WHERE attempted_at < {cutoff})
"""

# The backlog gauge: pending deliveries counted up to BACKLOG_CAP (a count is a scan of the
# partial index; beyond that the number only says "very large"), and the oldest one's age.
BACKLOG_CAP = 1_000_000
BACKLOG = f"""
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM webhook_deliveries WHERE state = 'pending' LIMIT {BACKLOG_CAP}) AS p),
       (SELECT min(created_at) FROM webhook_deliveries WHERE state = 'pending')
"""
