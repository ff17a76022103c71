"""The relational model, as SQLAlchemy Core tables. Migrations in store/migrations create it.

Conventions:
- Management rows carry ``created_at``/``updated_at`` as naive UTC datetimes (the documents
  print "YYYY-MM-DD HH:MM:SS").
- Queue and event rows carry epoch seconds as floats: the hot path compares and orders by
  them, and the documents print events as Unix timestamps.
- Statuses are the documents' strings ("Enabled", "Approval Pending", ...).
- Soft-deleted rows keep status "Deleted" so messages and events keep their references.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only gives AUTOINCREMENT-like rowids to INTEGER PRIMARY KEY; BigInteger would not be.
BigId = BigInteger().with_variant(Integer(), "sqlite")

user_groups = Table(
    "user_groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    # 0 = unlimited.
    Column("max_sender_domains", Integer, nullable=False, server_default="0"),
    Column("send_limit_per_hour", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False),
    Column("name", String(255), nullable=False, server_default=""),
    Column("password_hash", String(255), nullable=True),
    Column("group_id", Integer, ForeignKey("user_groups.id"), nullable=False),
    Column("status", String(32), nullable=False, server_default="Enabled"),
    Column("trusted", Boolean, nullable=False, server_default=text("true")),
    Column("verified", Boolean, nullable=False, server_default=text("true")),
    # NULL = inherit from the group.
    Column("send_limit_per_hour", Integer, nullable=True),
    Column("max_sender_domains", Integer, nullable=True),
    Column("api_key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index(
        "uq_users_email_live",
        "email",
        unique=True,
        sqlite_where=text("status != 'Deleted'"),
        postgresql_where=text("status != 'Deleted'"),
    ),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("expires_at", Float, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

gateway_domains = Table(
    "gateway_domains",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(253), nullable=False),
    Column("status", String(32), nullable=False, server_default="Approval Pending"),
    # LinkTracking, OpenTracking, UnsubscribeLink, CustomSubdomain, CustomTrackPrefix,
    # TrackMerge, TrackPrefixDisabled, HostingProvider.
    Column("options", JSON, nullable=False),
    Column("dkim_selector", String(63), nullable=False),
    # PEM (PKCS#8), sealed by SecretBox when a key-encryption key is configured.
    Column("dkim_private_key", Text, nullable=False),
    # Base64 DER SubjectPublicKeyInfo: the p= of the DKIM TXT record.
    Column("dkim_public_key", Text, nullable=False),
    # NULL until emailgateway.regeneratesigningkey; then sealed by SecretBox.
    Column("signing_key", Text, nullable=True),
    # {"DNSRecords": {host: [type, value, verified|null]}}
    Column("verification_meta", JSON, nullable=False),
    Column("policy_meta", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_gateway_domains_name", "name"),
    Index(
        "uq_gateway_domains_user_name_live",
        "user_id",
        "name",
        unique=True,
        sqlite_where=text("status != 'Deleted'"),
        postgresql_where=text("status != 'Deleted'"),
    ),
    # A name is Enabled for one account at a time (docs/dns.md "Who owns a domain").
    Index(
        "uq_gateway_domains_name_enabled",
        "name",
        unique=True,
        sqlite_where=text("status = 'Enabled'"),
        postgresql_where=text("status = 'Enabled'"),
    ),
)

smtp_credentials = Table(
    "smtp_credentials",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("domain_id", Integer, ForeignKey("gateway_domains.id"), nullable=False, index=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(64), nullable=False),
    Column("status", String(32), nullable=False, server_default="Enabled"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Sender-domain API keys ("SenderAPIKey", Bearer of the public v1 routes).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("domain_id", Integer, ForeignKey("gateway_domains.id"), nullable=False, index=True),
    Column("description", String(255), nullable=False, server_default=""),
    Column("key_hash", String(64), nullable=False, unique=True),
    # What listings show: the key is returned once and stored hashed.
    Column("key_hint", String(32), nullable=False),
    Column("status", String(32), nullable=False, server_default="Enabled"),
    Column("options", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_used_at", DateTime, nullable=True),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("domain_id", Integer, ForeignKey("gateway_domains.id"), nullable=False, index=True),
    Column("event", String(32), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", String(32), nullable=False, server_default="Enabled"),
    Column("created_at", DateTime, nullable=False),
    # What getwebhooks shows of the delivery side: the last attempt (epoch seconds, HTTP
    # status or NULL when no answer, our reason when it failed) and the failed attempts since
    # the last success.
    Column("last_attempt_at", Float, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("failures", Integer, nullable=False, server_default="0"),
)

# The webhook outbox: one row per (event, webhook) to post, written by a trigger on `events` in
# the event's own transaction (relay/webhooks/outbox.py), so every writer of events is covered
# and nothing is posted for an event that rolled back. The event and its message's headers are
# copied in: the post does not depend on the event log's retention.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("domain_id", Integer, nullable=False),
    # The webhook-id header: the same on every attempt (the receiver's idempotency key).
    Column("msg_id", String(40), nullable=False),
    Column("event_id", BigInteger, nullable=True),
    Column("event", String(32), nullable=False),
    Column("message_id", String(36), nullable=True),
    Column("recipient", String(320), nullable=True),
    Column("logged_at", Float, nullable=False),
    Column("smtp_code", Integer, nullable=True),
    Column("smtp_response", Text, nullable=True),
    Column("data", JSON, nullable=True),
    Column("header_from", String(998), nullable=False, server_default=""),
    Column("subject", String(998), nullable=False, server_default=""),
    Column("message_id_header", String(998), nullable=False, server_default=""),
    # pending | delivered | failed (given up) | cancelled (webhook deleted)
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(96), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The only secondary index, kept small because every delivery passes through it: claims
    # (due pending deliveries of one webhook, oldest first) and the backlog gauge (count and
    # oldest created_at, from the index alone). Retention purges the oldest rows by id.
    Index(
        "ix_webhook_deliveries_claim",
        "webhook_id",
        "next_attempt_at",
        "created_at",
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    ),
)

# Every attempt to post a delivery (getwebhookdeliveries).
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False),
    Column("webhook_id", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", Float, nullable=False),
    # HTTP status; NULL when there was no answer (timeout, connection failure, refused).
    Column("status", Integer, nullable=True),
    Column("latency", Float, nullable=False),
    # delivered | retry | failed (given up)
    Column("outcome", String(16), nullable=False),
    Column("error", Text, nullable=False, server_default=""),
    Column("response", Text, nullable=False, server_default=""),
    Index("ix_webhook_attempts_webhook", "webhook_id", "id"),
)

# user_id 0 = global (installation-wide) suppression.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("reason", String(255), nullable=False, server_default=""),
    # manual | bounce | complaint | unsubscribe
    Column("source", String(32), nullable=False, server_default="manual"),
    Column("created_at", DateTime, nullable=False),
    Index("uq_suppressions_user_email", "user_id", "email", unique=True),
    Index("ix_suppressions_email", "email"),
)

delivery_servers = Table(
    "delivery_servers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    # "false" | "ssl" | "tls" as in seed 004.
    Column("secure", String(8), nullable=False),
    Column("timeout", Integer, nullable=False),
    Column("auth", Boolean, nullable=False),
    Column("username", String(255), nullable=False, server_default=""),
    # Sealed by SecretBox: we need it back to authenticate downstream.
    Column("password", Text, nullable=False, server_default=""),
    Column("link_tracking_domain", String(255), nullable=False, server_default=""),
    Column("open_tracking_domain", String(255), nullable=False, server_default=""),
    Column("mfrom_domain", String(255), nullable=False, server_default=""),
    Column("enforced_from", String(320), nullable=False, server_default=""),
    Column("senderinfo_as_mfrom", Boolean, nullable=False, server_default=text("false")),
    Column("senderinfo_as_from", Boolean, nullable=False, server_default=text("false")),
    Column("sender_rotation", String(16), nullable=False, server_default="Disabled"),
    Column("sender_rotation_settings", Text, nullable=False, server_default=""),
    # A PowerMTA server gets X-Job (and X-Virtual-MTA when set) at injection (mta/powermta).
    Column("powermta", Boolean, nullable=False, server_default=text("false")),
    Column("powermta_vmta", String(255), nullable=False, server_default=""),
    Column("verification_results", JSON, nullable=False),
    Column("verification_last_checked_at", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

delivery_server_assignments = Table(
    "delivery_server_assignments",
    metadata,
    Column(
        "server_id",
        Integer,
        ForeignKey("delivery_servers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("group_id", Integer, ForeignKey("user_groups.id"), primary_key=True),
    # Marketing | Transactional | AutoResponder
    Column("channel", String(32), primary_key=True),
)

# User-area sender domains of seed 003 (distinct from the gateway domains above).
user_sender_domains = Table(
    "user_sender_domains",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("domain", String(253), nullable=False),
    Column("status", String(32), nullable=False, server_default="Approval Pending"),
    Column("options", JSON, nullable=False),
    Column("verification_meta", JSON, nullable=False),
    Column("policy_meta", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("uq_user_sender_domains_user_domain", "user_id", "domain", unique=True),
)

# ---------------------------------------------------------------------------------------------
# Queue: one row per accepted message, one per recipient, and the event log.

messages = Table(
    "messages",
    metadata,
    # Also the id in "250 2.0.0 Ok: queued as <id>".
    Column("id", String(36), primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("domain_id", Integer, nullable=False),
    Column("credential_id", Integer, nullable=True),
    Column("api_key_id", Integer, nullable=True),
    # smtp | api
    Column("source", String(8), nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("header_from", String(998), nullable=False, server_default=""),
    Column("subject", String(998), nullable=False, server_default=""),
    Column("message_id_header", String(998), nullable=False, server_default=""),
    Column("client_ip", String(64), nullable=False, server_default=""),
    Column("size", Integer, nullable=False),
    # The signed message exactly as it is handed on (to the recipients without a body of
    # their own); NULL once every recipient is final.
    Column("body", LargeBinary, nullable=True),
    # Scheduled sending: the recipients are due from then on (Unix time); NULL = at once.
    Column("not_before", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_domain_created", "domain_id", "created_at"),
    # Message lookup by its Message-ID header (emailgateway.getmessage, the MessageID filters).
    Index("ix_messages_message_id_header", "message_id_header"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(36), ForeignKey("messages.id"), nullable=False, index=True),
    Column("rcpt", String(320), nullable=False),
    Column("rcpt_domain", String(253), nullable=False),
    # queued | deferred | held | delivered | bounced | failed
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_response", Text, nullable=True),
    # This recipient's own signed message (a variant, e.g. its own tracking links), delivered
    # in a transaction of its own; NULL = the message's body. NULL again once final.
    Column("body", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Partial index: the claim query only ever looks at pending rows.
    Index(
        "ix_recipients_due",
        "next_attempt_at",
        sqlite_where=text("state IN ('queued', 'deferred')"),
        postgresql_where=text("state IN ('queued', 'deferred')"),
    ),
    # Recipients of scheduled messages not tried yet (only those: others are due at their
    # creation), so the queue-depth gauge counts them without reading the table.
    Index(
        "ix_recipients_scheduled",
        "next_attempt_at",
        sqlite_where=text("state = 'queued' AND next_attempt_at > created_at"),
        postgresql_where=text("state = 'queued' AND next_attempt_at > created_at"),
    ),
    # Recipients on hold (relay queue hold), for the queue listing, release and the gauge:
    # only held rows enter it, so the hot paths pay nothing.
    Index(
        "ix_recipients_held",
        "next_attempt_at",
        sqlite_where=text("state = 'held'"),
        postgresql_where=text("state = 'held'"),
    ),
)

# The event log. On PostgreSQL it is partitioned by day on ``created_at`` (declarative range
# partitioning, partitions in the ``event_partitions`` schema, managed by
# relay/store/eventparts.py), so its primary key there is (created_at, id): the partition key
# must be part of it. SQLite keeps the rowid primary key. Every insert also updates the rollup
# tables below in the same transaction, by database triggers (migration 0003).
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("domain_id", Integer, nullable=False),
    Column("message_id", String(36), nullable=True),
    Column("recipient", String(320), nullable=True),
    # accepted | delivered | deferred | bounced | failed | suppressed | ...
    Column("event", String(32), nullable=False),
    Column("smtp_code", Integer, nullable=True),
    Column("smtp_response", Text, nullable=True),
    Column("data", JSON, nullable=True),
    Index("ix_events_user_created", "user_id", "created_at"),
    Index("ix_events_user_event_created", "user_id", "event", "created_at"),
    Index("ix_events_domain_created", "domain_id", "created_at"),
    Index("ix_events_domain_event_created", "domain_id", "event", "created_at"),
    Index("ix_events_message", "message_id"),
)

# emailgateway.smtprelay's UUID per account (key: its SHA-256), for a bounded time: a retried
# call answers the first call's queue id instead of queueing again. The primary key decides
# between concurrent retries; completed_at is NULL while the first call is still submitting.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", Integer, primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("queue_id", String(36), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("completed_at", Float, nullable=True),
)

# Keys of feedback already recorded (relay/queue/feedback.py): a PowerMTA accounting record or
# a report read twice records its event once.
feedback_keys = Table(
    "feedback_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("created_at", Float, nullable=False),
)

# Secrets every node of an installation must share, generated once by whichever node needs one
# first (e.g. "tracking": the key behind tracking tokens). Sealed with the key-encryption key
# when one is configured.
cluster_secrets = Table(
    "cluster_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

# -- Rollups of the event log, written by the triggers on ``events`` ---------------------------
# ``day`` is the UTC day number (created_at // 86400). A rollup row holds the counts of one key
# for one day. On SQLite the trigger adds to the row of its key (seq 0); on PostgreSQL each
# statement inserts its own rows (seq from a sequence: concurrent writers never wait on each
# other's rows) and the maintenance task folds them into seq 0 (relay/store/eventparts.py).
# Readers always SUM over the key. ``n`` counts events; ``uniq`` counts the events that are the
# first of their kind for their recipient (docs/events.md "Counting").

event_counts = Table(
    "event_counts",
    metadata,
    Column("user_id", Integer, nullable=False),
    Column("domain_id", Integer, nullable=False),
    Column("day", Integer, nullable=False),
    Column("event", String(32), nullable=False),
    # 0 when the event has no SMTP code.
    Column("smtp_code", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("uniq", BigInteger, nullable=False),
    # Newest created_at counted in the row.
    Column("last_at", Float, nullable=False),
    Index(
        "uq_event_counts_key",
        "user_id",
        "domain_id",
        "day",
        "event",
        "smtp_code",
        "seq",
        unique=True,
    ),
    Index(
        "ix_event_counts_unfolded",
        "seq",
        sqlite_where=text("seq <> 0"),
        postgresql_where=text("seq <> 0"),
    ),
)

# The recipient-domain statistics' classes (docs/events.md "Counting"), and per class the
# delivery-time columns of event_rcpt_domains.
RCPT_CLASSES = ("sent", "failed")
RCPT_TIMING = ("timed", "seconds", "min", "max", *(f"h{i}" for i in range(8)))
RCPT_DOMAINS_COVERED = [
    "n",
    "accepted",
    "sent",
    "failed",
    "sent_timed",
    "sent_seconds",
    "sent_min",
    "sent_max",
]

event_rcpt_domains = Table(
    "event_rcpt_domains",
    metadata,
    Column("domain_id", Integer, nullable=False),
    Column("day", Integer, nullable=False),
    # The recipient's domain, lower case (the part after the first "@").
    Column("rcpt_domain", String(320), nullable=False),
    Column("seq", BigInteger, nullable=False),
    # Every event, and the 'accepted' ones.
    Column("n", BigInteger, nullable=False),
    Column("accepted", BigInteger, nullable=False),
    # Counted once per recipient: sent = delivered or accepted-by-mta; failed = bounced,
    # rejected or failed.
    Column("sent", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    # Per class, of those with a delivery time: how many, their sum, min and max, and the
    # delivery-speed histogram (h0..h7: < 1s, 1-5s, 5-10s, 10-30s, 30-60s, 1-5m, 5-10m, > 10m).
    *(
        Column(
            f"{k}_{c}",
            Float if c in ("seconds", "min", "max") else BigInteger,
            nullable=c in ("min", "max"),
        )
        for k in RCPT_CLASSES
        for c in RCPT_TIMING
    ),
    # PostgreSQL: the columns the recipient-domain listings read are in the key's index, so
    # they are answered from it alone (index-only scan), whatever the table's layout.
    Index(
        "uq_event_rcpt_domains_key",
        "domain_id",
        "day",
        "rcpt_domain",
        "seq",
        unique=True,
        postgresql_include=RCPT_DOMAINS_COVERED,
    ),
    Index("ix_event_rcpt_domains_rcpt", "domain_id", "rcpt_domain", "day"),
    Index(
        "ix_event_rcpt_domains_unfolded",
        "seq",
        sqlite_where=text("seq <> 0"),
        postgresql_where=text("seq <> 0"),
    ),
)

# Events of messages sent with tags (the send API's Tags), counted per tag.
event_tags = Table(
    "event_tags",
    metadata,
    Column("domain_id", Integer, nullable=False),
    Column("day", Integer, nullable=False),
    Column("tag", String(255), nullable=False),
    Column("event", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("uniq", BigInteger, nullable=False),
    Index("uq_event_tags_key", "domain_id", "day", "tag", "event", "seq", unique=True),
    Index(
        "ix_event_tags_unfolded",
        "seq",
        sqlite_where=text("seq <> 0"),
        postgresql_where=text("seq <> 0"),
    ),
)

# The tags of each tagged message (from its 'accepted' events), for counting its later events.
event_message_tags = Table(
    "event_message_tags",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("tags", JSON, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

# The first event of each kind (delivered, bounced, opened, clicked, ...) per recipient of a
# message: what makes unique counts exact (docs/events.md "Counting").
event_firsts = Table(
    "event_firsts",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("event_id", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

# SQLite only: the ids of events inserted since the writer last counted them into the rollups
# (relay/store/rollups.py); empty once a write transaction commits. PostgreSQL's statement
# trigger counts as it goes, so there it stays empty.
event_unfolded = Table(
    "event_unfolded",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=False),
)

# ---------------------------------------------------------------------------------------------
# The MX listener (mta/bounces/).

# Reports the MX listener accepted but could not use (unparseable, unmatched), kept for
# inspection for a bounded time and number (mx.report_retention_days, mx.report_max_stored).
mx_reports = Table(
    "mx_reports",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False, index=True),
    # unparsed | unmatched | ignored | error
    Column("result", String(16), nullable=False),
    Column("reason", String(255), nullable=False, server_default=""),
    Column("client_ip", String(64), nullable=False, server_default=""),
    Column("mail_from", String(320), nullable=False, server_default=""),
    Column("rcpt", String(320), nullable=False, server_default=""),
    # The message the envelope's VERP token names, when it had a valid one.
    Column("message_id", String(36), nullable=True),
    Column("size", Integer, nullable=False),
    # The report as received, cut at a bound (``size`` is the whole size).
    Column("content", LargeBinary, nullable=False),
)
