"""The ingest path's SQL, per backend, kept together (procrastinate-style named queries).

The group commit is the relay's hottest write, so it bypasses SQLAlchemy: under load every
``await`` costs a full event-loop iteration, and a SQLAlchemy transaction over aiosqlite takes
about fifteen of them. Here a commit is one hop: one executor call on SQLite, one statement on
PostgreSQL.
"""

from __future__ import annotations

# -- SQLite (sqlite3 in the writer thread; executemany, one transaction) ----------------------

SQLITE_INSERT_MESSAGE = """
INSERT INTO messages (id, user_id, domain_id, credential_id, api_key_id, source, mail_from,
    header_from, subject, message_id_header, client_ip, size, body, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

SQLITE_INSERT_RECIPIENT = """
INSERT INTO recipients (message_id, rcpt, rcpt_domain, state, attempts, next_attempt_at,
    created_at, updated_at)
VALUES (?, ?, ?, 'queued', 0, ?, ?, ?)
"""

SQLITE_INSERT_EVENT = """
INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
    smtp_response, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# -- PostgreSQL (asyncpg; one statement = one round trip, atomic) ------------------------------
# Data-modifying CTEs over unnest() arrays: the three inserts and the NOTIFY that wakes
# delivery workers on every node (delivered at commit) in a single statement.

PG_INGEST = """
WITH m AS (
    INSERT INTO messages (id, user_id, domain_id, credential_id, api_key_id, source, mail_from,
        header_from, subject, message_id_header, client_ip, size, body, created_at)
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[], $13::bytea[],
        $14::float8[])
), r AS (
    INSERT INTO recipients (message_id, rcpt, rcpt_domain, state, attempts, next_attempt_at,
        created_at, updated_at)
    SELECT mid, rcpt, dom, 'queued', 0, ts, ts, ts
    FROM unnest($15::text[], $16::text[], $17::text[], $18::float8[]) AS x(mid, rcpt, dom, ts)
), e AS (
    INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
        smtp_response, data)
    SELECT * FROM unnest($19::float8[], $20::int[], $21::int[], $22::text[], $23::text[],
        $24::text[], $25::int[], $26::text[], $27::json[])
)
SELECT pg_notify('relay_queue', '') WHERE cardinality($1::text[]) > 0
"""

# -- Feedback: what comes back about a sent message (relay/queue/feedback.py) -----------------
# An item is recorded only when its message and recipient are known and its dedupe key (if
# any) was never seen: then its event, and for a suppressing item the account suppression row
# and a 'suppressed' event. The event's account and domain come from the message row.

SQLITE_FEEDBACK_MATCH = """
SELECT m.user_id, m.domain_id, r.rcpt FROM messages m
JOIN recipients r ON r.message_id = m.id
WHERE m.id = ? AND lower(r.rcpt) = lower(?)
LIMIT 1
"""

SQLITE_FEEDBACK_KEY = """
INSERT INTO feedback_keys (key, created_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING
"""

SQLITE_SUPPRESS = """
INSERT INTO suppressions (user_id, email, reason, source, created_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id, email) DO UPDATE SET reason = excluded.reason, source = excluded.source
"""

PG_FEEDBACK = """
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
    INSERT INTO feedback_keys (key, created_at)
    SELECT key, ts FROM m WHERE key IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), ok AS (
    SELECT m.* FROM m WHERE m.key IS NULL OR m.key IN (SELECT key FROM k)
), e AS (
    INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, event, smtp_code,
        smtp_response, data)
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
    ON CONFLICT (user_id, email) DO UPDATE SET reason = excluded.reason, source = excluded.source
)
SELECT ord, user_id, lower(qrcpt) AS email FROM ok
"""
