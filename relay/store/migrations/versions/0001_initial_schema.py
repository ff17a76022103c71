"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 21:08:23.961213
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("secure", sa.String(length=8), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("auth", sa.Boolean(), nullable=False),
        sa.Column("username", sa.String(length=255), server_default="", nullable=False),
        sa.Column("password", sa.Text(), server_default="", nullable=False),
        sa.Column("link_tracking_domain", sa.String(length=255), server_default="", nullable=False),
        sa.Column("open_tracking_domain", sa.String(length=255), server_default="", nullable=False),
        sa.Column("mfrom_domain", sa.String(length=255), server_default="", nullable=False),
        sa.Column("enforced_from", sa.String(length=320), server_default="", nullable=False),
        sa.Column(
            "senderinfo_as_mfrom", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column(
            "senderinfo_as_from", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column(
            "sender_rotation", sa.String(length=16), server_default="Disabled", nullable=False
        ),
        sa.Column("sender_rotation_settings", sa.Text(), server_default="", nullable=False),
        sa.Column("verification_results", sa.JSON(), nullable=False),
        sa.Column("verification_last_checked_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_servers")),
    )
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_response", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_domain_created", ["domain_id", "created_at"], unique=False)
        batch_op.create_index("ix_events_message", ["message_id"], unique=False)
        batch_op.create_index("ix_events_user_created", ["user_id", "created_at"], unique=False)

    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("mail_from", sa.String(length=320), nullable=False),
        sa.Column("header_from", sa.String(length=998), server_default="", nullable=False),
        sa.Column("subject", sa.String(length=998), server_default="", nullable=False),
        sa.Column("message_id_header", sa.String(length=998), server_default="", nullable=False),
        sa.Column("client_ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_domain_created", ["domain_id", "created_at"], unique=False
        )

    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=255), server_default="", nullable=False),
        sa.Column("source", sa.String(length=32), server_default="manual", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
    )
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.create_index("ix_suppressions_email", ["email"], unique=False)
        batch_op.create_index("uq_suppressions_user_email", ["user_id", "email"], unique=True)

    op.create_table(
        "user_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("max_sender_domains", sa.Integer(), server_default="0", nullable=False),
        sa.Column("send_limit_per_hour", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_groups")),
    )
    op.create_table(
        "delivery_server_assignments",
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["user_groups.id"],
            name=op.f("fk_delivery_server_assignments_group_id_user_groups"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["delivery_servers.id"],
            name=op.f("fk_delivery_server_assignments_server_id_delivery_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "server_id", "group_id", "channel", name=op.f("pk_delivery_server_assignments")
        ),
    )
    op.create_table(
        "recipients",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("rcpt", sa.String(length=320), nullable=False),
        sa.Column("rcpt_domain", sa.String(length=253), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_response", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_recipients_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipients")),
    )
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recipients_due",
            ["next_attempt_at"],
            unique=False,
            sqlite_where=sa.text("state IN ('queued', 'deferred')"),
            postgresql_where=sa.text("state IN ('queued', 'deferred')"),
        )
        batch_op.create_index(batch_op.f("ix_recipients_message_id"), ["message_id"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), server_default="Enabled", nullable=False),
        sa.Column("trusted", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("verified", sa.Boolean(), server_default=sa.text("(true)"), nullable=False),
        sa.Column("send_limit_per_hour", sa.Integer(), nullable=True),
        sa.Column("max_sender_domains", sa.Integer(), nullable=True),
        sa.Column("api_key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["user_groups.id"], name=op.f("fk_users_group_id_user_groups")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("api_key_hash", name=op.f("uq_users_api_key_hash")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(
            "uq_users_email_live",
            ["email"],
            unique=True,
            sqlite_where=sa.text("status != 'Deleted'"),
            postgresql_where=sa.text("status != 'Deleted'"),
        )

    op.create_table(
        "gateway_domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column(
            "status", sa.String(length=32), server_default="Approval Pending", nullable=False
        ),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("dkim_selector", sa.String(length=63), nullable=False),
        sa.Column("dkim_private_key", sa.Text(), nullable=False),
        sa.Column("dkim_public_key", sa.Text(), nullable=False),
        sa.Column("signing_key", sa.Text(), nullable=True),
        sa.Column("verification_meta", sa.JSON(), nullable=False),
        sa.Column("policy_meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_gateway_domains_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_domains")),
    )
    with op.batch_alter_table("gateway_domains", schema=None) as batch_op:
        batch_op.create_index("ix_gateway_domains_name", ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_domains_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "uq_gateway_domains_user_name_live",
            ["user_id", "name"],
            unique=True,
            sqlite_where=sa.text("status != 'Deleted'"),
            postgresql_where=sa.text("status != 'Deleted'"),
        )

    op.create_table(
        "sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "user_sender_domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column(
            "status", sa.String(length=32), server_default="Approval Pending", nullable=False
        ),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("verification_meta", sa.JSON(), nullable=False),
        sa.Column("policy_meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sender_domains_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sender_domains")),
    )
    with op.batch_alter_table("user_sender_domains", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_sender_domains_user_id"), ["user_id"], unique=False
        )
        batch_op.create_index(
            "uq_user_sender_domains_user_domain", ["user_id", "domain"], unique=True
        )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_hint", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), server_default="Enabled", nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["gateway_domains.id"],
            name=op.f("fk_api_keys_domain_id_gateway_domains"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_domain_id"), ["domain_id"], unique=False)

    op.create_table(
        "smtp_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), server_default="Enabled", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["gateway_domains.id"],
            name=op.f("fk_smtp_credentials_domain_id_gateway_domains"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_smtp_credentials_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smtp_credentials")),
        sa.UniqueConstraint("username", name=op.f("uq_smtp_credentials_username")),
    )
    with op.batch_alter_table("smtp_credentials", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_smtp_credentials_domain_id"), ["domain_id"], unique=False
        )

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), server_default="Enabled", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["gateway_domains.id"],
            name=op.f("fk_webhooks_domain_id_gateway_domains"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_webhooks_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhooks_domain_id"), ["domain_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhooks_domain_id"))

    op.drop_table("webhooks")
    with op.batch_alter_table("smtp_credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_smtp_credentials_domain_id"))

    op.drop_table("smtp_credentials")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_domain_id"))

    op.drop_table("api_keys")
    with op.batch_alter_table("user_sender_domains", schema=None) as batch_op:
        batch_op.drop_index("uq_user_sender_domains_user_domain")
        batch_op.drop_index(batch_op.f("ix_user_sender_domains_user_id"))

    op.drop_table("user_sender_domains")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_user_id"))

    op.drop_table("sessions")
    with op.batch_alter_table("gateway_domains", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_gateway_domains_user_name_live",
            sqlite_where=sa.text("status != 'Deleted'"),
            postgresql_where=sa.text("status != 'Deleted'"),
        )
        batch_op.drop_index(batch_op.f("ix_gateway_domains_user_id"))
        batch_op.drop_index("ix_gateway_domains_name")

    op.drop_table("gateway_domains")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_users_email_live",
            sqlite_where=sa.text("status != 'Deleted'"),
            postgresql_where=sa.text("status != 'Deleted'"),
        )

    op.drop_table("users")
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipients_message_id"))
        batch_op.drop_index(
            "ix_recipients_due",
            sqlite_where=sa.text("state IN ('queued', 'deferred')"),
            postgresql_where=sa.text("state IN ('queued', 'deferred')"),
        )

    op.drop_table("recipients")
    op.drop_table("delivery_server_assignments")
    op.drop_table("user_groups")
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_index("uq_suppressions_user_email")
        batch_op.drop_index("ix_suppressions_email")

    op.drop_table("suppressions")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_domain_created")

    op.drop_table("messages")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_user_created")
        batch_op.drop_index("ix_events_message")
        batch_op.drop_index("ix_events_domain_created")

    op.drop_table("events")
    op.drop_table("delivery_servers")
