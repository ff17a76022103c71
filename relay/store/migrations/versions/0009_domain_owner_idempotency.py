"""one Enabled owner per domain name; smtprelay idempotency keys

A domain name is Enabled for one account at a time (partial unique index). Installations that
already have a name Enabled for several accounts keep it Enabled for the one that added it
first; the others go back to Approval Pending (verifying them again decides, docs/dns.md).

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENABLED = "status = 'Enabled'"


def upgrade() -> None:
    op.execute(
        "UPDATE gateway_domains SET status = 'Approval Pending' "
        "WHERE status = 'Enabled' AND EXISTS (SELECT 1 FROM gateway_domains AS older "
        "WHERE older.name = gateway_domains.name AND older.status = 'Enabled' "
        "AND older.id < gateway_domains.id)"
    )
    with op.batch_alter_table("gateway_domains", schema=None) as batch_op:
        batch_op.create_index(
            "uq_gateway_domains_name_enabled",
            ["name"],
            unique=True,
            sqlite_where=sa.text(ENABLED),
            postgresql_where=sa.text(ENABLED),
        )
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("queue_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_created_at"))
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("gateway_domains", schema=None) as batch_op:
        batch_op.drop_index("uq_gateway_domains_name_enabled")
