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
