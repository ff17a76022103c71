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
    # The signed message exactly as it is handed on; NULL once every recipient is final.
    Column("body", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_domain_created", "domain_id", "created_at"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(36), ForeignKey("messages.id"), nullable=False, index=True),
    Column("rcpt", String(320), nullable=False),
    Column("rcpt_domain", String(253), nullable=False),
    # queued | deferred | delivered | bounced | failed
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_response", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Partial index: the claim query only ever looks at pending rows.
    Index(
        "ix_recipients_due",
        "next_attempt_at",
        sqlite_where=text("state IN ('queued', 'deferred')"),
        postgresql_where=text("state IN ('queued', 'deferred')"),
    ),
)

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
    Index("ix_events_domain_created", "domain_id", "created_at"),
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
