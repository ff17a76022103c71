"""webhook outbox: deliveries written by a trigger on events, attempts, per-domain signing keys

Revision ID: 0004
Revises: 0003

- ``webhook_deliveries``: one row per (event, subscribed webhook), inserted by a trigger on
  ``events`` in the event's own transaction, whoever wrote the event. PostgreSQL: one
  statement-level AFTER INSERT trigger with a transition table (``REFERENCING NEW TABLE``; it
  also works on a partitioned ``events``) that NOTIFYs ``relay_webhooks`` when it queued
  something. SQLite: a row trigger whose ``WHEN`` is one index probe of ``webhooks`` by domain,
  so events of domains without a matching webhook cost next to nothing.
- ``webhook_attempts``: every attempt (status, latency, response excerpt).
- ``webhooks``: the last attempt and the failures since the last success, for getwebhooks.
- ``gateway_domains.signing_key``: every domain that has none gets its own random key (64
  upper-case hex characters). A migration does not know the key-encryption key, so the key is
  written in clear; the relay encrypts clear keys when it starts with one configured
  (with every stored secret: relay/store/repos/sealing.py), and reads either form meanwhile.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Event names of the events table -> the webhook Event that subscribes to them (the internal
# names of emailgateway.addwebhook, which is how webhooks.event stores them); a webhook whose
# Event is the event's own name matches too. Frozen here as of this revision
# (relay.events.WEBHOOK_EVENTS; a test checks they agree).
SUBSCRIPTIONS = {
    "delivered": "delivery",
    "bounced": "bounce",
    "opened": "open",
    "clicked": "click",
    "unsubscribed": "unsubscribe",
    "complained": "complaint",
}


def _subscription(column: str) -> str:
    """The webhook Events that subscribe to the event in ``column``: its internal name and its
    own (a webhooks row holds either vocabulary)."""
    whens = " ".join(f"WHEN '{ours}' THEN '{theirs}'" for ours, theirs in SUBSCRIPTIONS.items())
    return f"({column}, CASE {column} {whens} ELSE {column} END)"


_COLUMNS = """webhook_id, user_id, domain_id, msg_id, event_id, event, message_id, recipient,
        logged_at, smtp_code, smtp_response, data, header_from, subject, message_id_header,
        state, attempts, next_attempt_at, created_at, updated_at"""

SQLITE_TRIGGER = f"""
CREATE TRIGGER webhook_outbox AFTER INSERT ON events
FOR EACH ROW WHEN EXISTS (
    SELECT 1 FROM webhooks
    WHERE webhooks.domain_id = NEW.domain_id AND webhooks.status = 'Enabled'
      AND webhooks.event IN {_subscription("NEW.event")})
BEGIN
    INSERT INTO webhook_deliveries ({_COLUMNS})
    SELECT w.id, NEW.user_id, NEW.domain_id, 'msg_' || lower(hex(randomblob(16))), NEW.id,
        NEW.event, NEW.message_id, NEW.recipient, NEW.created_at, NEW.smtp_code,
        NEW.smtp_response, NEW.data, COALESCE(NULLIF(m.header_from, ''), m.mail_from, ''),
        COALESCE(m.subject, ''), COALESCE(m.message_id_header, ''), 'pending', 0,
        clock.now, clock.now, clock.now
    FROM webhooks AS w
    JOIN (SELECT (julianday('now') - 2440587.5) * 86400.0 AS now) AS clock
    LEFT JOIN messages AS m ON m.id = NEW.message_id
    WHERE w.domain_id = NEW.domain_id AND w.status = 'Enabled'
      AND w.event IN {_subscription("NEW.event")};
END
"""

PG_FUNCTION = f"""
CREATE FUNCTION webhook_outbox() RETURNS trigger LANGUAGE plpgsql
-- A statement's worth of rows is small work: compiling it (JIT) would cost seconds.
SET jit = off
AS $$
DECLARE
    now_s float8 := extract(epoch FROM clock_timestamp());
BEGIN
    -- Installations without webhooks pay one probe of a tiny table per statement.
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE status = 'Enabled') THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries ({_COLUMNS})
    SELECT w.id, n.user_id, n.domain_id, 'msg_' || replace(gen_random_uuid()::text, '-', ''),
        n.id, n.event, n.message_id, n.recipient, n.created_at, n.smtp_code, n.smtp_response,
        n.data, COALESCE(NULLIF(m.header_from, ''), m.mail_from, ''), COALESCE(m.subject, ''),
        COALESCE(m.message_id_header, ''), 'pending', 0, now_s, now_s, now_s
    FROM webhook_outbox_new AS n
    JOIN webhooks AS w ON w.domain_id = n.domain_id AND w.status = 'Enabled'
        AND w.event IN {_subscription("n.event")}
    LEFT JOIN messages AS m ON m.id = n.message_id;
    IF FOUND THEN
        -- Delivered at commit, folded into one per transaction: wakes every node's workers.
        PERFORM pg_notify('relay_webhooks', '');
    END IF;
    RETURN NULL;
END
$$
"""

PG_TRIGGER = """
CREATE TRIGGER webhook_outbox AFTER INSERT ON events
REFERENCING NEW TABLE AS webhook_outbox_new
FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox()
"""

PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_attempt_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_status", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("failures", sa.Integer(), server_default="0", nullable=False))

    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("msg_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("logged_at", sa.Float(), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_response", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("header_from", sa.String(length=998), server_default="", nullable=False),
        sa.Column("subject", sa.String(length=998), server_default="", nullable=False),
        sa.Column("message_id_header", sa.String(length=998), server_default="", nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(length=96), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_claim",
            ["webhook_id", "next_attempt_at", "created_at"],
            unique=False,
            sqlite_where=PENDING,
            postgresql_where=PENDING,
        )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.Float(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("latency", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), server_default="", nullable=False),
        sa.Column("response", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_attempts_webhook", ["webhook_id", "id"], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)

    # Domains that never rotated shared one installation-wide key; each gets its own.
    ids = [row[0] for row in bind.execute(sa.text(_WITHOUT_KEY)).all()]
    for domain_id in ids:
        bind.execute(sa.text(_SET_KEY), {"key": secrets.token_hex(32).upper(), "id": domain_id})


_WITHOUT_KEY = "SELECT id FROM gateway_domains WHERE signing_key IS NULL"
_SET_KEY = "UPDATE gateway_domains SET signing_key = :key WHERE id = :id AND signing_key IS NULL"


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS webhook_outbox ON events")
        op.execute("DROP FUNCTION IF EXISTS webhook_outbox()")
    else:
        op.execute("DROP TRIGGER IF EXISTS webhook_outbox")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("failures")
        batch_op.drop_column("last_error")
        batch_op.drop_column("last_status")
        batch_op.drop_column("last_attempt_at")
